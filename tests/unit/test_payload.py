"""Payload validation: each way a fetch_batch payload can be wrong, said plainly."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import BadJobError
from worker.queue.checks import job_id_problems
from worker.queue.payload import FetchBatch, parse_batch
from worker.queue.refusals import field_names


def test_valid_payload() -> None:
    """URLs are kept exactly as given, with the optional source."""
    b = parse_batch(
        (), {"urls": [" http://a/ ", "http://b"], "source": "s"}, max_urls=5, job_id="j"
    )
    assert b.urls == [" http://a/ ", "http://b"]
    assert b.source == "s"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "'urls' is required"),
        ((), {"urls": "http://a"}, "'urls' must be a list of strings, got str"),
        ((), {"urls": []}, "'urls' is empty"),
        ((), {"urls": ["http://a", 3, None]}, "2 item\\(s\\) are not, the first at index 1 is int"),
        ((), {"urls": ["u"] * 6}, "over the limit of 5"),
        ((), {"urls": ["u"], "source": 7}, "'source' must be a string"),
        ((), {"urls": ["u"], "priority": 1}, "unknown field\\(s\\) 'priority'"),
        ((["u"],), {}, "keyword arguments only"),
        ((), {"urls": ["http://a", "http://b\x00"]}, "index 1 contain a NUL"),
        ((), {"urls": ["u"], "source": "a\x00"}, "'source' contains a control character"),
        ((), {"urls": ["u"], "source": "x\nINFO job.done forged=1"}, "control character"),
        ((), {"urls": ["u"], "source": "\x1b]8;;http://evil\x1b\\"}, "control character"),
        ((), {"urls": ["u"], "source": "abc\u202edef"}, "control character"),
    ],
)
def test_bad_payloads_say_what_is_wrong(args: tuple, kwargs: dict, message: str) -> None:
    """Each malformed payload raises BadJobError with a specific message."""
    with pytest.raises(BadJobError, match=message):
        parse_batch(args, kwargs, max_urls=5, job_id="j")


def test_overlong_job_id_is_refused() -> None:
    """Job ids are bounded, since they are stored in every row."""
    with pytest.raises(BadJobError, match="job id is longer"):
        parse_batch((), {"urls": ["u"]}, max_urls=5, job_id="x" * 300)


@pytest.mark.parametrize("job_id", ["a\nb", "[/x]\x1b[2J", "id\x00", "r\u2067tl"])
def test_job_ids_with_control_characters_are_refused(job_id: str) -> None:
    """A job id that could forge a log line or drive a terminal is refused by the worker."""
    with pytest.raises(BadJobError, match="control or format character"):
        parse_batch((), {"urls": ["u"]}, max_urls=5, job_id=job_id)


@pytest.mark.parametrize("job_id", ["cron:arq:queue:poll_sources:1", "poll-abc", "replay-1"])
def test_intakes_refuse_reserved_job_ids_the_worker_runs(job_id: str) -> None:
    """Intakes refuse harvester's own id prefixes; the worker accepts them (its own jobs)."""
    assert any("reserved" in p for p in job_id_problems(job_id))
    assert job_id_problems(job_id, intake=False) == []
    parse_batch((), {"urls": ["u"]}, max_urls=5, job_id=job_id)


def _contract_rows(text: str) -> list[str]:
    """The first column of the table that follows the README's job-contract marker."""
    after = text.split("<!-- job contract:", 1)[1].splitlines()[1:]
    rows = []
    for line in after:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    return [r.strip("`") for r in rows[2:]]  # past the header and its rule


def test_the_readmes_contract_table_names_exactly_the_models_fields(repo_root: Path) -> None:
    """The job contract other services read is the one the worker enforces: no field missing
    from the README, none documented that the model does not take."""
    rows = _contract_rows((repo_root / "README.md").read_text(encoding="utf-8"))
    assert rows == field_names(FetchBatch)


@pytest.mark.parametrize(
    "body",
    [
        {"urls": ["http://a/"]},
        {"urls": ["http://a/"], "source": None, "scheduled": True, "job_id": "j-1"},
        {"urls": []},
        {"urls": "http://a/"},
        {"urls": ["http://a/", 3]},
        {"urls": ["http://a/"], "source": "s" * 201},
        {"urls": ["http://a/"], "scheduled": "yes"},
        {"urls": ["http://a/"], "extra": 1},
        {"urls": ["http://a/"] * 6},
        {},
        {"requests": [{"url": "http://a/"}]},
        {"requests": [{"url": "http://a/", "method": "POST", "json": {"q": [1]}}]},
        {"requests": [{"url": "http://a/"}] * 6},
        {"requests": [{"url": "http://a/", "verb": "GET"}]},
        {"requests": [{"url": "http://a/", "headers": {"Cookie": "a=b"}}]},
        {"urls": ["http://a/"], "requests": [{"url": "http://a/"}]},
        {"urls": ["http://a/"], "method": "POST", "json": {"q": 1}},
        {"urls": ["http://a/"], "method": "PATCH", "json": None},
        {"urls": ["http://a/"], "json": {"q": 1}},
        {"urls": ["http://a/"], "method": "GET", "json": [1]},
        {"urls": ["http://a/"], "method": "DELETE"},
        {"urls": ["http://a/"], "headers": {"Accept": "application/vnd.x+json"}},
        {"urls": ["http://a/"], "headers": {"authorization": "Bearer x"}},
        {"urls": ["http://a/"], "headers": {"Proxy-Connection": "x"}},
        {"urls": ["http://a/"], "headers": {"X-A": "a\r\nb"}},
        {"urls": ["http://a/"], "headers": {"bad name": "x"}},
        {"urls": ["http://a/"], "headers": {f"X-{i}": "v" for i in range(33)}},
        {"urls": ["http://a/"], "paginate": {"next": "link", "max_pages": 5}},
        {"urls": ["http://a/"], "paginate": {"next": "json", "path": "links.next"}},
        {"urls": ["http://a/"], "paginate": {"next": None, "cursor": {"path": "c", "param": "p"}}},
        {"urls": ["http://a/"], "paginate": None},
        {"urls": ["http://a/"], "paginate": {}},
        {"urls": ["http://a/"], "paginate": {"next": None}},
        {"urls": ["http://a/"], "paginate": {"next": "json"}},
        {"urls": ["http://a/"], "paginate": {"next": "link", "path": "a"}},
        {"urls": ["http://a/"], "paginate": {"next": "json", "path": "a..b"}},
        {
            "urls": ["http://a/"],
            "paginate": {"next": "link", "cursor": {"path": "c", "param": "p"}},
        },
        {"urls": ["http://a/"], "paginate": {"cursor": {"path": "c", "param": ""}}},
        {"urls": ["http://a/"], "paginate": {"next": "link", "max_pages": 1001}},
        {"urls": ["http://a/"], "paginate": {"next": "link", "extra": 1}},
        {"urls": ["http://a/"], "source": "s", "records": {"path": "$.data[*]", "key": "$.id"}},
        {"urls": ["http://a/"], "records": {"path": "$.data[*]", "key": "$.id"}},
        {"urls": ["http://a/"], "source": None, "records": {"path": "$.d[*]", "key": "$.id"}},
        {"urls": ["http://a/"], "records": None},
        {"urls": ["http://a/"], "source": "s", "records": {"path": "data[*]", "key": "$.id"}},
        {"urls": ["http://a/"], "source": "s", "records": {"path": "$.data[*]"}},
        {"urls": ["http://a/"], "source": "s", "records": {"path": "$", "key": "$", "x": 1}},
    ],
)
def test_the_openapi_schema_accepts_what_the_api_accepts(body: dict) -> None:
    """The generated schema and the validation the API and the worker run agree on each body."""
    import jsonschema

    from worker.ops.openapi import batch_schema
    from worker.settings import load_settings

    schema = batch_schema(load_settings(max_batch_urls=5))
    by_schema = jsonschema.Draft202012Validator(schema).is_valid(body)
    fields = {k: v for k, v in body.items() if k != "job_id"}
    try:
        parse_batch((), fields, max_urls=5, job_id=body.get("job_id") or "j", max_pages=1000)
    except BadJobError:
        by_model = False
    else:
        by_model = True
    assert by_schema == by_model


def test_auth_is_a_profile_name_checked_against_the_profiles_when_known() -> None:
    """`auth` must look like a profile name; with the profile names (the worker, an intake with
    the file) an unknown one is refused, naming it; without them it passes."""
    ok = parse_batch((), {"urls": ["https://a.example/"], "auth": "crm"}, max_urls=10, job_id="j")
    assert ok.as_kwargs() == {"urls": ["https://a.example/"], "auth": "crm"}
    with pytest.raises(BadJobError, match="'auth' must be a profile name"):
        parse_batch((), {"urls": ["https://a.example/"], "auth": "a b"}, max_urls=10, job_id="j")
    with pytest.raises(BadJobError, match=r"no credential profile named 'crm'.*profiles: billing"):
        parse_batch(
            (),
            {"urls": ["https://a.example/"], "auth": "crm"},
            max_urls=10,
            job_id="j",
            profiles={"billing"},
        )
    with pytest.raises(BadJobError, match=r"profiles: none"):
        parse_batch(
            (),
            {"urls": ["https://a.example/"], "auth": "crm"},
            max_urls=10,
            job_id="j",
            profiles={},
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"urls": ["u"], "requests": [{"url": "u"}]}, "not both"),
        ({"requests": []}, "'requests' is empty"),
        ({"requests": ["u"]}, r"'requests\[0\]' must be an object"),
        ({"requests": [{"url": "u", "verb": "GET"}]}, r"'requests\[0\]' has an unknown field"),
        ({"requests": [{"method": "GET"}]}, r"'requests\[0\].url' is required"),
        ({"requests": [{"url": "u"}] * 6}, "'requests' has 6 items, over the limit of 5"),
        ({"requests": [{"url": "u\x00"}]}, r"'requests\[0\].url': contains a NUL"),
        ({"urls": ["u"], "method": "DELETE"}, "'method' must be one of GET, POST, PUT, PATCH"),
        ({"urls": ["u"], "json": {"q": 1}}, "'json' is a request body, which only POST"),
        ({"urls": ["u"], "method": "POST", "json": {"q": "\x00"}}, "'json' contains a NUL"),
        (
            {"requests": [{"url": "u", "method": "GET", "json": [1]}]},
            r"'requests\[0\].json' is a request body",
        ),
        (
            {"method": "POST", "json": 1, "requests": [{"url": "u", "method": "GET"}]},
            r"'requests\[0\]' is a GET request, which has no body, but the batch has 'json'",
        ),
        ({"urls": ["u"], "headers": {"Cookie": "a=b"}}, "header 'Cookie' is refused"),
        ({"urls": ["u"], "headers": {"X": 1}}, "'headers.X' must be a string"),
        ({"urls": ["u"], "headers": ["X: 1"]}, "'headers' must be an object"),
        ({"requests": [{"url": "u", "headers": {"te": "x"}}]}, "hop-by-hop"),
        (
            {"requests": [{"url": "u", "headers": {"Authorization": "x"}}], "scheduled": True},
            "header 'Authorization' is refused",
        ),
    ],
)
def test_bad_requests_say_what_is_wrong(kwargs: dict, message: str) -> None:
    """Each malformed method, body, header or request list is refused in a plain sentence."""
    with pytest.raises(BadJobError, match=message):
        parse_batch((), kwargs, max_urls=5, job_id="j")


def test_scheduled_batches_take_requests_with_methods_and_bodies() -> None:
    """A poll of sources may be a batch of requests: POSTs with bodies and headers."""
    b = parse_batch(
        (),
        {
            "scheduled": True,
            "requests": [{"url": "http://a/1", "method": "POST", "json": {"q": 1}}],
            "headers": {"Accept": "application/vnd.x+json"},
        },
        max_urls=5,
        job_id="poll-1",
    )
    (request,) = b.requests_of()
    assert (b.scheduled, request.method, request.body and request.body.encoded) == (
        True,
        "POST",
        b'{"q":1}',
    )


def test_requests_inherit_and_override_the_batch() -> None:
    """A request takes the batch's method, body and headers unless it gives its own."""
    b = parse_batch(
        (),
        {
            "method": "POST",
            "json": {"q": 1},
            "headers": {"X-A": "1"},
            "requests": [
                {"url": "http://a/1"},
                {"url": "http://a/2", "method": "PUT", "json": [2], "headers": {"X-B": "2"}},
            ],
        },
        max_urls=5,
        job_id="j",
    )
    first, second = b.requests_of()
    assert (first.method, first.body and first.body.encoded, dict(first.headers)) == (
        "POST",
        b'{"q":1}',
        {"X-A": "1"},
    )
    assert (second.method, second.body and second.body.encoded, dict(second.headers)) == (
        "PUT",
        b"[2]",
        {"X-A": "1", "X-B": "2"},
    )
    assert b.size == 2


def test_a_plain_batch_is_enqueued_as_before() -> None:
    """Defaults stay out of the job, so a plain batch is {"urls": [...]} and `json` keeps its
    name on the wire."""
    assert parse_batch((), {"urls": ["u"]}, max_urls=5, job_id="j").as_kwargs() == {"urls": ["u"]}
    post = parse_batch((), {"urls": ["u"], "method": "POST", "json": None}, max_urls=5, job_id="j")
    assert post.as_kwargs() == {"urls": ["u"], "method": "POST"}
    assert post.requests_of()[0].body is None
