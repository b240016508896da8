"""`harvester api` over real HTTP and raw sockets: auth, bad bodies and job ids, the batch
lifecycle, health, metrics, outages, DNS rebinding, slow clients, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
import pytest
import yarl
from aiohttp import web
from arq.connections import ArqRedis
from arq.worker import Worker
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TEST_QUEUE, Services, wait_until, worker_env
from tests.helpers.cli import cli_env, harvester
from tests.helpers.upstream import Upstream
from worker.cli.main import main
from worker.devtools.embedded import free_port
from worker.engine.counters import REGISTRY
from worker.errors import ConfigError
from worker.ops.api import check_exposure, create_app, serve
from worker.queue.client import enqueue_urls
from worker.settings import Settings, get_settings

TOKEN = "t0ken-for-the-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


StartAPI = Callable[..., Awaitable[str]]


@pytest.fixture
async def start_api(
    make_settings: Callable[..., Settings], arq_queue: ArqRedis, pool: object
) -> AsyncIterator[StartAPI]:
    """Start the API on a loopback port (settings overrides as keywords, a token unless given;
    ``routes`` adds test-only routes) and return its base URL; everything stops after the test."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(routes: Sequence[web.RouteDef] = (), **overrides: Any) -> str:
            values: dict[str, Any] = {"api_token": TOKEN, "api_max_body_bytes": 64 * 1024}
            app = create_app(make_settings(**{**values, **overrides}))
            app.router.add_routes(routes)
            port = await stack.enter_async_context(serve(app, "127.0.0.1", 0))
            return f"http://127.0.0.1:{port}"

        yield start


@pytest.fixture
async def api(start_api: StartAPI) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """The API on a loopback port, and a client session for it."""
    base = await start_api()
    async with aiohttp.ClientSession() as session:
        yield session, base


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, noted, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.netloc.rpartition('@')[0]}@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{port}"))


async def _exchange(base: str, request: bytes) -> tuple[int, bytes]:
    """Send raw bytes (one request with ``Connection: close``); the status and body back."""
    url = urlsplit(base)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


async def test_batches_need_the_bearer_token(api: tuple[aiohttp.ClientSession, str]) -> None:
    """No token or a wrong one is 401 with WWW-Authenticate; health and metrics are open."""
    session, base = api
    body = {"urls": ["https://api.example/a"]}
    async with session.post(f"{base}/batches", json=body) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in (await r.json())["error"]
    wrong = {"Authorization": "Bearer nope"}
    async with session.post(f"{base}/batches", json=body, headers=wrong) as r:
        assert r.status == 401
    async with session.get(f"{base}/batches/x", headers=wrong) as r:
        assert r.status == 401
    async with session.get(f"{base}/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok", "redis": "ok", "postgres": "ok"}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b'["a"]', "application/json", 400, "must be a JSON object"),
        (b'{"urls": ["x"]}', "text/plain", 415, "application/json"),
        (b"{}", "application/json", 422, "'urls' is required"),
        (b'{"urls": [1]}', "application/json", 422, "only strings"),
        (b'{"urls": ["x"], "extra": 1}', "application/json", 422, "unknown field(s) 'extra'"),
        (b'{"urls": ["x"], "job_id": 5}', "application/json", 422, "'job_id' must be"),
        (b'{"urls": ["x"], "job_id": "a\\nb"}', "application/json", 422, "U+000A"),
        (b'{"urls": ["x"], "job_id": "a\\u200bb"}', "application/json", 422, "U+200B"),
        (b'{"urls": ["x"], "job_id": "' + b"j" * 257 + b'"}', "application/json", 422, "256"),
        (b'{"urls": ["x"], "job_id": "cron:x"}', "application/json", 422, "reserved"),
        (b'{"urls": ["x"], "job_id": "poll-x"}', "application/json", 422, "reserved"),
        (b'{"urls": ["x"], "job_id": "replay-x"}', "application/json", 422, "reserved"),
        (b'{"urls": ["' + b"x" * 70_000 + b'"]}', "application/json", 413, "over 65536 bytes"),
        (
            b'{"urls": ["x"], "headers": {"Authorization": "Bearer s3cret"}}',
            "application/json",
            422,
            "header 'Authorization' is refused: it carries a secret",
        ),
        (b'{"urls": ["x"], "headers": {"COOKIE": "a=b"}}', "application/json", 422, "secret"),
        (b'{"urls": ["x"], "headers": {"Keep-Alive": "5"}}', "application/json", 422, "hop-by-hop"),
        (b'{"urls": ["x"], "headers": {"Host": "b"}}', "application/json", 422, "from the URL"),
        (b'{"urls": ["x"], "headers": {"X": "a\\r\\nb"}}', "application/json", 422, "control"),
        (b'{"urls": ["x"], "json": {"q": 1}}', "application/json", 422, "only POST, PUT"),
        (b'{"urls": ["x"], "method": "HEAD"}', "application/json", 422, "'method' must be"),
        (b'{"requests": [{"url": "x", "m": 1}]}', "application/json", 422, "'requests[0]' has"),
        (b'{"urls": ["x"], "requests": [{"url": "x"}]}', "application/json", 422, "not both"),
        (b'{"urls": ["x"], "paginate": {"next": "pages"}}', "application/json", 422, "paginate"),
        (
            b'{"urls": ["x"], "paginate": {"next": "json", "path": "a..b"}}',
            "application/json",
            422,
            "paginate",
        ),
        (
            b'{"urls": ["x"], "paginate": {"next": "link", "max_pages": 100000}}',
            "application/json",
            422,
            "HARVESTER_MAX_PAGES",
        ),
        (b'{"urls": ["x"], "auth": "a b"}', "application/json", 422, "'auth' must be"),
        (
            b'{"urls": ["x"], "source": "s", "records": {"path": "$.data[", "key": "$.id"}}',
            "application/json",
            422,
            "'records.path': not a JSONPath",
        ),
        (
            b'{"urls": ["x"], "records": {"path": "$.data[*]", "key": "$.id"}}',
            "application/json",
            422,
            "'records' needs a 'source'",
        ),
    ],
)
async def test_bad_bodies_get_clear_4xx(
    api: tuple[aiohttp.ClientSession, str],
    arq_queue: ArqRedis,
    body: bytes,
    content_type: str,
    status: int,
    message: str,
) -> None:
    """Each way a body can be wrong has its status and a message saying what was wrong;
    nothing is enqueued."""
    session, base = api
    headers = {**AUTH, "Content-Type": content_type}
    async with session.post(f"{base}/batches", data=body, headers=headers) as r:
        assert r.status == status
        assert message in (await r.json())["error"]
    assert await arq_queue.queued_jobs() == []


async def test_the_intake_refuses_an_unknown_profile_when_it_has_the_credentials_file(
    start_api: StartAPI, arq_queue: ArqRedis, credentials_file: Path
) -> None:
    """With HARVESTER_CREDENTIALS an unknown `auth` is a 422 naming it and nothing is
    enqueued; a known one is taken. Without the file the intake cannot know and passes it on
    (the worker refuses it)."""
    batch = {"urls": ["https://api.example.com/a"], "auth": "nope"}
    with_file = await start_api(credentials=credentials_file)
    without = await start_api()
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(f"{with_file}/batches", json=batch) as r:
            assert r.status == 422
            assert "no credential profile named 'nope'" in (await r.json())["error"]
        assert await arq_queue.queued_jobs() == []
        async with session.post(f"{with_file}/batches", json={**batch, "auth": "basic"}) as r:
            assert r.status == 202
        async with session.post(f"{without}/batches", json=batch) as r:
            assert r.status == 202
    assert len(await arq_queue.queued_jobs()) == 2


async def test_a_batch_goes_from_queued_to_complete_with_its_summary(
    api: tuple[aiohttp.ClientSession, str],
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
    upstream: Upstream,
) -> None:
    """POST is 202 with the job id and a Location; GET shows queued, then after a worker ran
    it, complete with rows landed and the summary. POSTing the same batch under the id again
    is a 200 no-op marked duplicate; another batch under it is 409 and names the id."""
    session, base = api
    urls = [upstream.url("/json/a1"), upstream.url("/json/a2"), upstream.url("/status/404")]
    batch = {"urls": urls, "source": "api-test", "job_id": "api-1"}
    async with session.post(f"{base}/batches", json=batch, headers=AUTH) as r:
        assert r.status == 202
        assert r.headers["Location"] == "/batches/api-1"
        assert await r.json() == {"job_id": "api-1", "urls": 3, "status_url": "/batches/api-1"}
    (queued,) = await arq_queue.queued_jobs()
    assert queued.kwargs == {"urls": urls, "source": "api-test"}
    async with session.get(f"{base}/batches/api-1", headers=AUTH) as r:
        assert (await r.json())["status"] == "queued"
    async with session.post(f"{base}/batches", json=batch, headers=AUTH) as r:
        assert r.status == 200
        assert (await r.json())["duplicate"] is True
    other = {**batch, "urls": [upstream.url("/json/other")]}
    async with session.post(f"{base}/batches", json=other, headers=AUTH) as r:
        assert r.status == 409
        assert "'api-1' is already used by a different batch" in (await r.json())["error"]
    assert len(await arq_queue.queued_jobs()) == 1

    await make_worker().main()
    async with session.get(f"{base}/batches/api-1", headers=AUTH) as r:
        data = await r.json()
    assert data["status"] == "complete"
    assert data["success"] is True
    assert data["landed"] == {"documents": 2, "failures": 1}
    assert data["summary"]["documents"] == 2
    assert data["summary"]["failures"] == {"http_status": 1}
    async with session.get(f"{base}/batches/nope", headers=AUTH) as r:
        assert r.status == 404


async def test_metrics_and_openapi(api: tuple[aiohttp.ClientSession, str]) -> None:
    """/metrics parses as Prometheus text with the API's counters and the queue depth;
    /openapi.json describes every route."""
    session, base = api
    labels = {"route": "/batches/{job_id}", "status": "401"}
    before = REGISTRY.get_sample_value("harvester_api_requests_total", labels) or 0.0
    async with session.get(f"{base}/batches/x") as r:
        assert r.status == 401
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("harvester_queue_depth", ())] == 0
    key = ("harvester_api_requests_total", (("route", "/batches/{job_id}"), ("status", "401")))
    assert samples[key] == before + 1
    async with session.get(f"{base}/openapi.json") as r:
        doc = await r.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/batches",
        "/batches/{job_id}",
        "/healthz",
        "/metrics",
        "/openapi.json",
        # the dashboard's (its /static/ files are not API)
        "/",
        "/login",
        "/logout",
        "/session",
        "/status",
        "/status/history",
        "/status/progress",
        "/failures",
        "/failures/replay",
        "/sources",
        "/sources/enabled",
    }
    batch = doc["components"]["schemas"]["Batch"]["properties"]
    assert {"urls", "requests", "method", "json", "headers"} <= set(batch)
    assert "Authorization" in batch["headers"]["description"]
    assert "records" in batch


async def test_a_batch_with_records_lands_them(
    api: tuple[aiohttp.ClientSession, str],
    arq_queue: ArqRedis,
    upstream: Upstream,
    make_worker: Callable[..., Worker],
    pool: asyncpg.Pool,
) -> None:
    """POST /batches with records enqueues them with the job, and the worker upserts them."""
    session, base = api
    upstream.served["orders"] = (b'{"data": [{"id": 1}, {"id": 2}]}', "application/json")
    records = {"path": "$.data[*]", "key": "$.id"}
    batch = {"urls": [upstream.url("/served/orders")], "source": "api-orders", "records": records}
    async with session.post(f"{base}/batches", json=batch, headers=AUTH) as r:
        assert r.status == 202
    (queued,) = await arq_queue.queued_jobs()
    assert queued.kwargs["records"] == records
    await make_worker().main()
    keys = await pool.fetch("SELECT key FROM records WHERE source = 'api-orders' ORDER BY key")
    assert [k["key"] for k in keys] == ["1", "2"]


async def test_a_post_batch_through_the_api_lands_each_body(
    api: tuple[aiohttp.ClientSession, str],
    upstream: Upstream,
    make_worker: Callable[..., Worker],
    pool: asyncpg.Pool,
) -> None:
    """A batch of POST requests posted to the intake is fetched with its bodies and headers,
    and each lands as a row of its own carrying its method and body."""
    session, base = api
    url = upstream.url("/echo/api-search")
    body = {
        "job_id": "api-post",
        "method": "POST",
        "headers": {"X-Client": "api-test"},
        "requests": [{"url": url, "json": {"q": "a"}}, {"url": url, "json": {"q": "b"}}],
    }
    async with session.post(f"{base}/batches", json=body, headers=AUTH) as r:
        assert r.status == 202, await r.text()
        assert (await r.json())["urls"] == 2
    await make_worker().main()
    hits = upstream.hits_for("/echo/api-search")
    assert sorted(h.body for h in hits) == [b'{"q":"a"}', b'{"q":"b"}']
    assert {h.method for h in hits} == {"POST"}
    assert {h.headers["X-Client"] for h in hits} == {"api-test"}
    rows = await pool.fetch(
        "SELECT method, request FROM documents WHERE job_id = 'api-post' ORDER BY request::text"
    )
    assert [(r["method"], r["request"]) for r in rows] == [
        ("POST", {"q": "a"}),
        ("POST", {"q": "b"}),
    ]


def test_no_token_only_on_loopback(make_settings: Callable[..., Settings]) -> None:
    """Without HARVESTER_API_TOKEN the API binds loopback only; with one, anywhere."""
    settings = make_settings()
    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(settings, host)
    with pytest.raises(ConfigError, match="HARVESTER_API_TOKEN is required"):
        check_exposure(settings, "0.0.0.0")
    check_exposure(make_settings(api_token=TOKEN), "0.0.0.0")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("", "is empty"),
        ("   ", "leading or trailing whitespace"),
        (" " + TOKEN, "leading or trailing whitespace"),
        (TOKEN + "\n", "leading or trailing whitespace"),
        ("x" * 15, "at least 16 characters"),
    ],
)
def test_a_weak_token_is_refused_at_load(
    make_settings: Callable[..., Settings], token: str, problem: str
) -> None:
    """An empty, padded or short HARVESTER_API_TOKEN is refused when settings load, naming the
    variable and never echoing the token."""
    with pytest.raises(ConfigError, match="HARVESTER_API_TOKEN") as caught:
        make_settings(api_token=token)
    assert problem in str(caught.value)
    if token.strip():
        assert token.strip() not in str(caught.value)
    assert make_settings(api_token="x" * 16).api_token is not None


async def test_api_command_refuses_to_expose_itself_without_a_token(services: Services) -> None:
    """`harvester api --host 0.0.0.0` without a token exits 2 and says why."""
    run = await harvester("api", "--host", "0.0.0.0", env=cli_env(services))
    assert run.returncode == 2
    assert "HARVESTER_API_TOKEN is required" in run.stderr


async def test_worker_metrics_count_fetches_rows_and_jobs(
    make_worker: Callable[..., Worker], arq_queue: ArqRedis, upstream: Upstream
) -> None:
    """A worker with HARVESTER_METRICS_PORT serves its counters, and a run moves each by what
    it did: 4 documents, 1 failure after 1 retry, 5 rows, 1 job."""
    port = free_port()
    wanted = {
        ("harvester_fetches_total", (("outcome", "document"), ("status_class", "2xx"))): 4,
        ("harvester_fetches_total", (("outcome", "http_status"), ("status_class", "5xx"))): 1,
        ("harvester_fetch_retries_total", ()): 1,
        ("harvester_fetch_seconds_count", ()): 4,
        ("harvester_rows_written_total", (("table", "documents"),)): 4,
        ("harvester_rows_written_total", (("table", "fetch_failures"),)): 1,
        ("harvester_jobs_total", (("result", "complete"),)): 1,
    }
    # The registry is per process and other tests count into it too: compare before and after.
    before = {k: REGISTRY.get_sample_value(k[0], dict(k[1])) or 0.0 for k in wanted}
    urls = [upstream.url(f"/json/m{i}") for i in range(4)] + [upstream.url("/status/500")]
    await enqueue_urls(arq_queue, urls, job_id_prefix="metrics")
    worker = make_worker(metrics_port=port, max_attempts=2)
    await worker.main()  # the server stays up until the worker is closed
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    after = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for f in text_string_to_metric_families(text)
        for x in f.samples
    }
    assert {k: after[k] - before[k] for k in wanted} == wanted
    assert after[("harvester_queue_depth", ())] == 0


async def test_a_job_id_with_url_syntax_round_trips(
    api: tuple[aiohttp.ClientSession, str], arq_queue: ArqRedis
) -> None:
    """A job id with a space, '/', '%', '?' and '#' is percent-encoded in Location and
    status_url, and GET on that Location finds the job."""
    session, base = api
    job_id = "a b/c%d?e#f"
    batch = {"urls": ["https://api.example/a"], "job_id": job_id}
    async with session.post(f"{base}/batches", json=batch, headers=AUTH) as r:
        assert r.status == 202
        location = r.headers["Location"]
        assert location == "/batches/a%20b%2Fc%25d%3Fe%23f"
        assert (await r.json())["status_url"] == location
    url = yarl.URL(base + location, encoded=True)
    async with session.get(url, headers=AUTH) as r:
        assert r.status == 200
        data = await r.json()
    assert (data["job_id"], data["status"]) == (job_id, "queued")


async def test_a_non_utf8_authorization_header_is_401(
    api: tuple[aiohttp.ClientSession, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Authorization bytes that are not UTF-8 are a wrong token (401), not a 500."""
    _, base = api
    status, body = await _exchange(
        base,
        b"GET /batches/x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n",
    )
    assert status == 401
    assert "bearer token" in orjson.loads(body)["error"]
    _no_tracebacks(caplog)


@pytest.mark.parametrize("path", ["/batches/a%00b", "/batches/a%0Ab", "/batches/a%7Fb"])
async def test_a_job_id_with_a_control_character_is_404(
    api: tuple[aiohttp.ClientSession, str], caplog: pytest.LogCaptureFixture, path: str
) -> None:
    """GET of a job id with a control character (NUL, which Postgres refuses) is 404."""
    session, base = api
    async with session.get(yarl.URL(base + path, encoded=True), headers=AUTH) as r:
        assert r.status == 404
        assert "no job with that id" in (await r.json())["error"]
    _no_tracebacks(caplog)


async def test_redis_down_is_a_json_503_without_traceback(
    start_api: StartAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis unreachable, POST and GET under /batches and /metrics answer a one-line JSON
    503 naming Redis, and log no traceback."""
    redis_url = f"redis://127.0.0.1:{_closed_port()}/0"
    base = await start_api(redis_url=redis_url, redis_retry_time=0)
    batch = {"urls": ["https://api.example/a"]}
    async with aiohttp.ClientSession(headers=AUTH) as session:
        for method, path in [("POST", "/batches"), ("GET", "/batches/x"), ("GET", "/metrics")]:
            async with session.request(method, f"{base}{path}", json=batch) as r:
                assert r.status == 503, path
                error = (await r.json())["error"]
            assert "Redis is unavailable" in error
            assert "\n" not in error
    _no_tracebacks(caplog)


async def test_postgres_down_is_a_json_503_without_traceback(
    start_api: StartAPI, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    """With Postgres unreachable (after start-up: no migration at start), GET /batches/{id}
    answers a one-line JSON 503 naming Postgres, and logs no traceback."""
    database_url = _with_port(services.database_url, _closed_port())
    base = await start_api(database_url=database_url, db_pool_min=0, migrate_on_start=False)
    async with aiohttp.ClientSession(headers=AUTH) as s, s.get(f"{base}/batches/x") as r:
        assert r.status == 503
        error = (await r.json())["error"]
    assert "Postgres is unavailable" in error
    assert "\n" not in error
    _no_tracebacks(caplog)


async def test_a_request_that_fails_is_counted(start_api: StartAPI) -> None:
    """A handler that raises is a JSON 500, counted under its route and status 500."""

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    base = await start_api(routes=[web.get("/boom", boom)])
    labels = {"route": "/boom", "status": "500"}
    before = REGISTRY.get_sample_value("harvester_api_requests_total", labels) or 0.0
    async with aiohttp.ClientSession(headers=AUTH) as s, s.get(f"{base}/boom") as r:
        assert r.status == 500
        assert (await r.json()) == {"error": "internal error"}
    assert REGISTRY.get_sample_value("harvester_api_requests_total", labels) == before + 1


async def test_without_a_token_only_loopback_hosts_are_served(
    start_api: StartAPI, arq_queue: ArqRedis
) -> None:
    """Without a token a foreign Host (DNS rebinding) is 403 everywhere but /healthz; loopback
    names and addresses, with or without a port, are served."""
    base = await start_api(api_token=None)
    port = urlsplit(base).port
    evil = {"Host": "evil.example"}
    batch = {"urls": ["https://api.example/a"]}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/batches", json=batch, headers=evil) as r:
            assert r.status == 403
            assert "Host" in (await r.json())["error"]
        for path in ("/batches/x", "/metrics", "/openapi.json"):
            async with session.get(f"{base}{path}", headers=evil) as r:
                assert r.status == 403, path
        async with session.get(f"{base}/healthz", headers=evil) as r:
            assert r.status == 200
        for host in (f"127.0.0.1:{port}", "127.0.0.2", f"localhost:{port}", "LocalHost", "[::1]"):
            async with session.get(f"{base}/batches/x", headers={"Host": host}) as r:
                assert r.status == 404, host
        for host in ("evil.example:80", "127.0.0.1.evil.example", "[::2]:80", "localhost:x"):
            async with session.get(f"{base}/batches/x", headers={"Host": host}) as r:
                assert r.status == 403, host
    assert await arq_queue.queued_jobs() == []


async def test_without_a_token_a_foreign_origin_cannot_post(
    start_api: StartAPI, arq_queue: ArqRedis
) -> None:
    """Without a token a POST with a non-loopback Origin is 403 and enqueues nothing; a
    loopback Origin is accepted."""
    base = await start_api(api_token=None)
    port = urlsplit(base).port
    batch = {"urls": ["https://api.example/a"]}
    async with aiohttp.ClientSession() as session:
        for origin in ("http://evil.example", "null", f"http://evil.example:{port}"):
            async with session.post(f"{base}/batches", json=batch, headers={"Origin": origin}) as r:
                assert r.status == 403, origin
                assert "Origin" in (await r.json())["error"]
        assert await arq_queue.queued_jobs() == []
        origin = f"http://localhost:{port}"
        async with session.post(f"{base}/batches", json=batch, headers={"Origin": origin}) as r:
            assert r.status == 202
    assert len(await arq_queue.queued_jobs()) == 1


async def test_with_a_token_the_host_is_not_checked(
    api: tuple[aiohttp.ClientSession, str],
) -> None:
    """With a token any Host is served (a proxy or load balancer names the service)."""
    session, base = api
    headers = {**AUTH, "Host": "harvester.internal.example"}
    async with session.get(f"{base}/batches/x", headers=headers) as r:
        assert r.status == 404


_PROBE = """
import asyncio, logging, os, signal, socket, sys, threading, urllib.request
import uvloop
from worker.ops import api
from worker.settings import load_settings

port = int(sys.argv[1])

def get_then_stop():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
            print(r.status, flush=True)
    except OSError as exc:
        print("request failed:", exc, flush=True)
    finally:
        os.kill(os.getpid(), signal.SIGTERM)

class Probe(logging.Handler):
    def emit(self, record):
        if record.getMessage() == "api.started":
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                print("listening", flush=True)
            except OSError as exc:
                print("not listening:", exc, flush=True)
            threading.Thread(target=get_then_stop).start()

logger = logging.getLogger("harvester.api")
logger.setLevel(logging.INFO)
logger.addHandler(Probe())
asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # as `harvester api` runs
api.run(load_settings(), "127.0.0.1", port)
print("stopped", flush=True)
"""


async def test_api_started_is_logged_once_the_port_listens(services: Services) -> None:
    """`api.run` (on uvloop, as the CLI runs it) logs api.started only when a client can
    already connect, serves requests, and stops cleanly (exit 0) on SIGTERM."""
    env = worker_env(services.database_url, services.redis_url, TEST_QUEUE)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PROBE, str(free_port()), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert out.decode().splitlines() == ["listening", "200", "stopped"], err.decode()
    assert proc.returncode == 0


def test_a_port_in_use_is_one_clear_line_and_exit_3(
    services: Services, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`harvester api --port P` with P taken prints one line naming the port and
    HARVESTER_API_PORT, and exits 3 without a traceback."""
    for name, value in worker_env(services.database_url, services.redis_url, TEST_QUEUE).items():
        if name.startswith("HARVESTER_") or name.endswith("_URL"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("HARVESTER_UVLOOP", "false")  # main() would install it for the session
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # main() configures logging
    get_settings.cache_clear()
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            code = main(["api", "--port", str(port)])
    finally:
        get_settings.cache_clear()
        root.handlers[:] = handlers
        root.setLevel(level)
    err = capsys.readouterr().err
    assert code == 3
    assert f"harvester: port {port} is in use (--port or HARVESTER_API_PORT)\n" in err
    assert "Traceback" not in err


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection (FIN or reset); what it sent until then."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One kept-alive GET on an open connection; its status (the body is read and dropped)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def _dropped(reason: str) -> float:
    labels = {"reason": reason}
    return REGISTRY.get_sample_value("harvester_api_connections_dropped_total", labels) or 0.0


async def test_a_client_slow_with_its_headers_is_disconnected(start_api: StartAPI) -> None:
    """Headers not complete within HARVESTER_API_HEADER_TIMEOUT, on a new connection (even
    trickled a byte at a time) or for the next request on a kept-alive one: the server
    closes the connection."""
    port = urlsplit(await start_api(api_header_timeout=0.5)).port
    before = _dropped("header_timeout")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        writer.write(b"GET /batches/x HT")  # half a request line, then nothing
        await writer.drain()
        assert await asyncio.wait_for(_until_closed(reader), 10) == b""
        assert time.monotonic() - started >= 0.45
    finally:
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    sent_all = False

    async def trickle() -> None:
        nonlocal sent_all
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.02)  # pacing the client, not waiting on the server
            sent_all = True

    sender = asyncio.create_task(trickle())
    try:
        assert await asyncio.wait_for(_until_closed(reader), 10) == b""
        assert not sent_all  # closed while still sending: 243 bytes take over 4.8 s
    finally:
        sender.cancel()
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await _get(reader, writer, "/healthz") == 200
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.")  # the next request stalls
        await writer.drain()
        assert await asyncio.wait_for(_until_closed(reader), 10) == b""
    finally:
        writer.close()
    assert _dropped("header_timeout") == before + 3


async def test_a_slow_body_gets_408(start_api: StartAPI, arq_queue: ArqRedis) -> None:
    """A POST body not received within HARVESTER_API_BODY_TIMEOUT is answered 408 with a JSON
    error naming the setting, and nothing is enqueued."""
    port = urlsplit(await start_api(api_body_timeout=0.5)).port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /batches HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n".encode()
            + b'{"urls": ['  # and the other 90 bytes never come
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408 ")
        body = await asyncio.wait_for(reader.readuntil(b"}"), 10)
        assert "HARVESTER_API_BODY_TIMEOUT" in orjson.loads(body)["error"]
    finally:
        writer.close()
    assert await arq_queue.queued_jobs() == []


async def test_connections_over_the_cap_are_closed(start_api: StartAPI) -> None:
    """With HARVESTER_API_MAX_CONNECTIONS open, another connection is closed at once, unserved;
    the open ones keep being served, and once one closes a new one is served again."""
    port = urlsplit(await start_api(api_max_connections=3, api_header_timeout=60)).port
    before = _dropped("over_limit")
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    try:
        for reader, writer in held:
            assert await _get(reader, writer, "/healthz") == 200  # open, and kept alive
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            with contextlib.suppress(ConnectionError):  # the server may be gone already
                await writer.drain()
            assert await asyncio.wait_for(_until_closed(reader), 10) == b""
        finally:
            writer.close()
        assert _dropped("over_limit") == before + 1
        assert await _get(*held[0], "/healthz") == 200
        held.pop()[1].close()

        async def served() -> bool:
            try:
                status, _ = await _exchange(
                    f"http://127.0.0.1:{port}",
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )
            except (ConnectionError, IndexError):  # closed unserved: not yet
                return False
            return status == 200

        await wait_until(served)
    finally:
        for _, writer in held:
            writer.close()


async def test_with_redis_down_a_request_answers_at_once_not_after_the_workers_budget(
    start_api: StartAPI,
) -> None:
    """The API does not ride out a Redis outage per request as a worker does (30 s by
    default): POST /batches answers 503 after about a second of retries."""
    redis_url = f"redis://127.0.0.1:{_closed_port()}/0"
    base = await start_api(redis_url=redis_url, redis_retry_time=30)
    async with aiohttp.ClientSession(headers=AUTH) as session:
        started = time.monotonic()
        async with session.post(f"{base}/batches", json={"urls": ["https://api.example/a"]}) as r:
            assert r.status == 503
        assert time.monotonic() - started < 15


async def test_the_intake_takes_notify_url_only_with_a_webhook_secret(
    start_api: StartAPI, arq_queue: ArqRedis
) -> None:
    """Without HARVESTER_WEBHOOK_SECRET a batch with notify_url is a 422 saying so, and nothing
    is enqueued; with it the job carries the URL; the OpenAPI document describes the field."""
    batch = {"urls": ["https://api.example.com/a"], "notify_url": "https://hooks.example.com/h"}
    without = await start_api()
    with_secret = await start_api(webhook_secret="whsec-0123456789abcdef")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        async with session.post(f"{without}/batches", json=batch) as r:
            assert r.status == 422
            assert "'notify_url' needs HARVESTER_WEBHOOK_SECRET" in (await r.json())["error"]
        assert await arq_queue.queued_jobs() == []
        async with session.post(f"{with_secret}/batches", json=batch) as r:
            assert r.status == 202
        async with session.get(f"{with_secret}/openapi.json") as r:
            schema = await r.json()
    (job,) = await arq_queue.queued_jobs()
    assert job.kwargs["notify_url"] == "https://hooks.example.com/h"
    assert "notify_url" in orjson.dumps(schema).decode()


async def test_notify_url_needs_the_webhook_secret_at_the_intake(
    start_api: StartAPI, arq_queue: ArqRedis
) -> None:
    """POST /batches with notify_url: 422 saying why when the API has no
    HARVESTER_WEBHOOK_SECRET (nothing enqueued); 202 with it, the job carrying the URL; the
    OpenAPI document describes the field."""
    batch = {"urls": ["https://a.example/x"], "notify_url": "https://hooks.example.com/h"}
    without = await start_api()
    with_secret = await start_api(webhook_secret="whsec-api-0123456789abcdef")
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{without}/batches", json=batch, headers=AUTH) as r:
            assert r.status == 422
            assert "'notify_url' needs HARVESTER_WEBHOOK_SECRET" in (await r.json())["error"]
        assert await arq_queue.queued_jobs() == []
        async with session.post(f"{with_secret}/batches", json=batch, headers=AUTH) as r:
            assert r.status == 202, await r.text()
        (queued,) = await arq_queue.queued_jobs()
        assert queued.kwargs["notify_url"] == "https://hooks.example.com/h"
        async with session.get(f"{with_secret}/openapi.json", headers=AUTH) as r:
            schema = (await r.json())["components"]["schemas"]["Batch"]["properties"]
    assert "HARVESTER_WEBHOOK_SECRET" in schema["notify_url"]["description"]
