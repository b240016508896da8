"""Requests with methods, bodies and headers: identity (job, method, URL, body hash) end to end."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job
from arq.worker import Worker

from tests.helpers import TEST_QUEUE
from tests.helpers.upstream import Upstream
from worker.engine import pipeline
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import Fetched
from worker.engine.requests import Body, Request
from worker.queue.payload import make_batch
from worker.queue.serialization import RemoteJobError, deserialize
from worker.settings import Settings


def _sha(value: object) -> bytes:
    return hashlib.sha256(
        orjson.dumps(value, option=orjson.OPT_SORT_KEYS)  # compact, UTF-8, sorted: canonical
    ).digest()


async def _run(
    pool: asyncpg.Pool, fetcher: Fetcher, settings: Settings, job_id: str, **fields: Any
) -> pipeline.BatchSummary:
    batch = make_batch(**fields)
    run = pipeline.Batch(job_id=job_id, requests=batch.requests_of(), source=None)
    return await pipeline.run(run, fetcher=fetcher, pool=pool, settings=settings)


async def test_same_url_different_bodies_are_different_outcomes(
    upstream: Upstream,
    pool: asyncpg.Pool,
    settings: Settings,
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Two POST bodies to one URL land as two documents with their method, body hash and body;
    the same request twice in a job is one outcome, and a re-run adds nothing."""
    url = upstream.url("/echo/search")
    requests = [
        {"url": url, "method": "POST", "json": {"q": "a", "page": 1}},
        {"url": url, "method": "POST", "json": {"page": 1, "q": "a"}},  # same body, other order
        {"url": url, "method": "POST", "json": {"q": "b"}},
        {"url": url},
    ]
    fetcher = make_fetcher(settings)
    summary = await _run(pool, fetcher, settings, "post-1", requests=requests)
    assert (summary.urls, summary.distinct_urls, summary.documents) == (4, 3, 3)
    rows = await pool.fetch(
        "SELECT method, body_hash, request, body FROM documents WHERE job_id = 'post-1' "
        "ORDER BY method, body_hash NULLS FIRST"
    )
    got = {(r["method"], r["body_hash"]): (r["request"], r["body"]) for r in rows}
    assert got == {
        ("GET", None): (None, {"name": "search", "method": "GET", "body": None}),
        ("POST", _sha({"q": "a", "page": 1})): (
            {"page": 1, "q": "a"},
            {"name": "search", "method": "POST", "body": {"page": 1, "q": "a"}},
        ),
        ("POST", _sha({"q": "b"})): (
            {"q": "b"},
            {"name": "search", "method": "POST", "body": {"q": "b"}},
        ),
    }
    assert [h.method for h in upstream.hits_for("/echo/search")].count("POST") == 2
    again = await _run(pool, fetcher, settings, "post-1", requests=requests)
    assert (again.already_done, again.documents) == (3, 0)
    assert len(upstream.hits_for("/echo/search")) == 3


async def test_per_request_method_and_headers_reach_the_upstream(
    upstream: Upstream,
    pool: asyncpg.Pool,
    settings: Settings,
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """A request's own method, body and headers override the batch's; the batch's headers go
    with every request, and a body goes as canonical application/json."""
    await _run(
        pool,
        make_fetcher(settings),
        settings,
        "hdr-1",
        method="PUT",
        json={"b": 2, "a": "é"},
        headers={"X-Tenant": "acme", "Accept": "application/vnd.x+json"},
        requests=[
            {"url": upstream.url("/echo/one")},
            {"url": upstream.url("/echo/two"), "method": "PATCH", "headers": {"x-tenant": "t2"}},
            {"url": upstream.url("/echo/three"), "method": "POST", "json": [1]},
        ],
    )
    hits = {h.path: h for h in upstream.hits_for("/echo/")}
    one, two, three = hits["/echo/one"], hits["/echo/two"], hits["/echo/three"]
    assert (one.method, one.body) == ("PUT", '{"a":"é","b":2}'.encode())
    assert one.headers["Content-Type"] == "application/json"
    assert (one.headers["X-Tenant"], one.headers["Accept"]) == ("acme", "application/vnd.x+json")
    tenant = [v for k, v in two.headers.items() if k.lower() == "x-tenant"]
    assert (two.method, tenant) == ("PATCH", ["t2"])
    assert (three.method, three.body) == ("POST", b"[1]")


@pytest.mark.parametrize(
    ("code", "method", "body"),
    [
        (301, "GET", b""),
        (302, "GET", b""),
        (303, "GET", b""),
        (307, "POST", b'{"q":1}'),
        (308, "POST", b'{"q":1}'),
    ],
)
async def test_redirects_after_post_follow_browsers(
    upstream: Upstream,
    make_fetcher: Callable[[Settings], Fetcher],
    settings: Settings,
    code: int,
    method: str,
    body: bytes,
) -> None:
    """A 301/302/303 after POST is followed by a GET without the body; 307 keeps both."""
    target = f"/redirect-as/{code}?location=/echo/after-{code}"
    request = Request(upstream.url(target), "POST", Body.of({"q": 1}))
    out = await make_fetcher(settings).fetch(request)
    assert isinstance(out, Fetched), out
    hit = upstream.hits_for(f"/echo/after-{code}")[0]
    assert (hit.method, hit.body) == (method, body)
    assert ("Content-Type" in hit.headers) == bool(body)
    assert out.request is request  # the outcome is the request enqueued, wherever it landed


async def test_a_get_rows_key_is_its_url_key(
    upstream: Upstream,
    pool: asyncpg.Pool,
    settings: Settings,
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """A GET without a body keeps today's identity: its key is harvester_url_key(url), and the
    columns hold GET and NULL; a POST of the same URL has a key of its own."""
    url = upstream.url("/echo/k")
    fetcher = make_fetcher(settings)
    await _run(pool, fetcher, settings, "key-1", urls=[url])
    await _run(pool, fetcher, settings, "key-1", requests=[{"url": url, "method": "POST"}])
    rows = await pool.fetch(
        "SELECT method, body_hash, request, harvester_url_key(url) AS url_key, "
        "harvester_request_key(url, method, body_hash) AS key FROM documents "
        "WHERE job_id = 'key-1' ORDER BY method"
    )
    get, post = rows
    assert (get["method"], get["body_hash"], get["request"]) == ("GET", None, None)
    assert get["key"] == get["url_key"] == hashlib.sha256(url.encode()).digest()
    assert post["method"] == "POST"
    assert post["key"] != post["url_key"]


async def _refused(arq_queue: ArqRedis, job_id: str) -> str:
    info = await Job(
        job_id, arq_queue, _queue_name=TEST_QUEUE, _deserializer=deserialize
    ).result_info()
    assert info is not None
    assert isinstance(info.result, RemoteJobError)
    return str(info.result)


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Authorization": "Bearer s3cret"}, "carries a secret"),
        ({"cookie": "session=s3cret"}, "carries a secret"),
        ({"PROXY-AUTHORIZATION": "Basic s3cret"}, "carries a secret"),
        ({"Connection": "close"}, "hop-by-hop"),
        ({"Transfer-Encoding": "chunked"}, "hop-by-hop"),
        ({"Host": "elsewhere.example"}, "sets it from the URL"),
        ({"X-Evil": "a\r\nInjected: 1"}, "control character"),
    ],
)
async def test_the_worker_refuses_a_raw_job_with_a_refused_header(
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
    headers: dict[str, str],
    why: str,
) -> None:
    """A job written straight into Redis with a refused header fails with the reason, and
    nothing is fetched or stored."""
    url = upstream.url("/echo/refused")
    await arq_queue.enqueue_job("fetch_batch", _job_id="hdr-bad", urls=[url], headers=headers)
    await arq_queue.enqueue_job(
        "fetch_batch", _job_id="req-bad", requests=[{"url": url, "headers": headers}]
    )
    worker = make_worker()
    await worker.main()
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 2)
    for job_id in ("hdr-bad", "req-bad"):
        assert why in await _refused(arq_queue, job_id)
    assert upstream.hits_for("/echo/") == []
    assert await pool.fetchval("SELECT count(*) FROM documents") == 0
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 0


async def test_the_worker_fetches_a_post_job_from_redis(
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """A raw POST job (batch method, json and headers) lands one row per distinct body."""
    url = upstream.url("/echo/graphql")
    await arq_queue.enqueue_job(
        "fetch_batch",
        _job_id="gql",
        requests=[{"url": url, "json": {"query": "{a}"}}, {"url": url, "json": {"query": "{b}"}}],
        method="POST",
        headers={"X-Client": "harvester-test"},
    )
    worker = make_worker()
    await worker.main()
    assert worker.jobs_complete == 1
    bodies = await pool.fetch("SELECT request FROM documents WHERE job_id = 'gql' ORDER BY 1")
    assert [r["request"] for r in bodies] == [{"query": "{a}"}, {"query": "{b}"}]
    assert {h.headers["X-Client"] for h in upstream.hits_for("/echo/graphql")} == {"harvester-test"}
