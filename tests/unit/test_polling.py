"""settle(): what a poll of a registered source records, for each way it can end."""

from __future__ import annotations

from collections.abc import Callable

from worker.engine.outcomes import Failed, Fetched, NotModified, ResponseMeta
from worker.engine.polling import (
    CHANGED,
    MAX_SINCE_VALUE,
    NOT_MODIFIED,
    UNCHANGED,
    SourceState,
    answered,
    content_hash,
    poll_request,
    read_cursor,
    settle,
)
from worker.engine.requests import Body, Request
from worker.settings import Settings

BODY = b'{"v": 1}'


def state(**kw: object) -> SourceState:
    values: dict[str, object] = {
        "id": 7,
        "url": "https://api.example/x",
        "interval_s": 600,
        "etag": '"v1"',
        "last_modified": None,
        "content_hash": content_hash(BODY),
        "consecutive_failures": 0,
    }
    values.update(kw)
    return SourceState(**values)  # type: ignore[arg-type]


def meta(etag: str | None = '"v1"', fresh: float | None = None) -> ResponseMeta:
    return ResponseMeta(etag=etag, last_modified=None, fresh_for=fresh)


def test_not_modified_lands_nothing_and_keeps_the_content(settings: Settings) -> None:
    """A 304 records not_modified, no row, keeps the hash, resets failures."""
    polled = settle(
        state(consecutive_failures=3), NotModified("u", 5, 1, meta(etag=None)), settings
    )
    assert polled.row is None
    u = polled.update
    assert (u.outcome, u.ok, u.status, u.document) == (NOT_MODIFIED, True, 304, False)
    assert u.etag == '"v1"'  # a 304 without ETag keeps the one we had
    assert u.content_hash == content_hash(BODY)
    assert (u.consecutive_failures, u.delay_s) == (0, 600)


def test_same_body_is_unchanged_and_lands_nothing(settings: Settings) -> None:
    """A 200 whose body hashes like the last one records unchanged and lands no document."""
    polled = settle(state(), Fetched("u", 200, BODY, 5, 1, meta()), settings)
    assert polled.row is None
    assert (polled.update.outcome, polled.update.document) == (UNCHANGED, False)


def test_same_body_lands_when_configured_to_store_unchanged(
    make_settings: Callable[..., Settings],
) -> None:
    """HARVESTER_SOURCES_STORE_UNCHANGED=true lands every 200 as a document."""
    fetched = Fetched("u", 200, BODY, 5, 1, meta())
    polled = settle(state(), fetched, make_settings(sources_store_unchanged=True))
    assert polled.row is fetched
    assert (polled.update.outcome, polled.update.document) == (UNCHANGED, True)


def test_changed_body_lands_with_its_new_validators(settings: Settings) -> None:
    """A new body lands as a document; the new ETag, hash and freshness are recorded."""
    fetched = Fetched("u", 200, b'{"v": 2}', 5, 1, meta(etag='"v2"', fresh=3600))
    polled = settle(state(), fetched, settings)
    assert polled.row is fetched
    u = polled.update
    assert (u.outcome, u.document, u.etag) == (CHANGED, True, '"v2"')
    assert u.content_hash == content_hash(b'{"v": 2}')
    assert u.delay_s == 3600  # max-age pushed the next poll later


def test_first_poll_is_a_change(settings: Settings) -> None:
    """A source never fetched before lands its first body."""
    polled = settle(state(etag=None, content_hash=None), Fetched("u", 200, BODY, 5, 1), settings)
    assert polled.row is not None
    assert polled.update.outcome == CHANGED


def test_failure_backs_off_and_keeps_the_last_good_state(settings: Settings) -> None:
    """A failure lands its failure row, counts up, doubles the delay, keeps validators."""
    failed = Failed("u", "http_status", "HTTP 500", 500, 3)
    polled = settle(state(consecutive_failures=2), failed, settings)
    assert polled.row is failed
    u = polled.update
    assert (u.outcome, u.ok, u.consecutive_failures) == ("http_status", False, 3)
    assert u.delay_s == 600 * 2**3
    assert (u.etag, u.content_hash) == ('"v1"', content_hash(BODY))


def test_failure_retry_after_pushes_the_next_poll(settings: Settings) -> None:
    """A 429 with a long Retry-After is not polled again before it."""
    failed = Failed("u", "http_status", "HTTP 429", 429, 1, retry_after=5000.0)
    assert settle(state(), failed, settings).update.delay_s == 5000


def test_a_fetched_body_gives_the_next_cursor_and_one_without_it_keeps_the_last(
    settings: Settings,
) -> None:
    """The value at since_path is the new since_value; a body without it, a 304, a failure
    and a body Postgres refused give none (the source keeps its value)."""
    cursor = state(since_param="since", since_path="page.next[0]", since_value="old")
    found = Fetched("u", 200, b'{"page": {"next": ["abc", "x"]}}', 5, 1, meta())
    update = settle(cursor, found, settings).update
    assert update.since_value == "abc"
    assert update.refused("not jsonb").since_value is None
    for outcome in (
        Fetched("u", 200, b'{"page": {}}', 5, 1, meta()),
        Fetched("u", 200, b"[1, 2]", 5, 1, meta()),
        NotModified("u", 5, 1, meta()),
        Failed("u", "http_status", "HTTP 500", 500, 1),
    ):
        assert settle(cursor, outcome, settings).update.since_value is None


def test_a_cursor_is_a_string_or_a_number_of_a_json_body() -> None:
    """Numbers are sent as JSON writes them; objects, lists, booleans, nulls, too-long
    strings and bodies that are not JSON give no cursor."""
    assert read_cursor(b'{"c": 42}', "c") == "42"
    assert read_cursor(b'{"c": 1.5}', "c") == "1.5"
    assert read_cursor(b'{"c": "2026-01-01T00:00:00Z"}', "c") == "2026-01-01T00:00:00Z"
    for body in (b'{"c": {}}', b'{"c": [1]}', b'{"c": true}', b'{"c": null}', b"not json"):
        assert read_cursor(body, "c") is None
    assert read_cursor(b'{"c": "' + b"x" * (MAX_SINCE_VALUE + 1) + b'"}', "c") is None


def test_a_poll_sends_its_cursor_in_the_query_replacing_a_value_the_url_has() -> None:
    """since_param=since_value is added to the query (or replaces the URL's own value); a
    source without a value yet is polled as registered."""
    request = Request("https://api.example/x?since=0&page=1", "POST", Body.of({"q": 1}))
    with_value = state(since_param="since", since_path="c", since_value="a b")
    sent = poll_request(with_value, request)
    assert (sent.url, sent.method, sent.body) == (
        "https://api.example/x?since=a+b&page=1",
        "POST",
        request.body,
    )
    assert poll_request(state(since_param="since", since_path="c"), request) is request
    answer = answered(Fetched(sent.url, 200, BODY, 5, 1, request=sent), request)
    assert (answer.url, answer.request) == (request.url, request)  # type: ignore[union-attr]


def test_only_gets_are_conditional() -> None:
    """A POST poll is always fetched: no validators go with it."""
    s = state()
    assert s.conditional(Request(s.url)) == s.validators
    assert s.conditional(Request(s.url, "POST", Body.of([1]))) is None
