"""Scheduled sources end to end: cron claims, conditional polls, change detection, backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import wait_until
from tests.helpers.locks import SECRET_ENV
from tests.helpers.upstream import Feed, Upstream
from worker.runtime.app import create_worker
from worker.scheduling import polls, sources
from worker.settings import Settings

Poll = Callable[..., Awaitable[None]]


@pytest.fixture
def poll(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> Poll:
    """One cron run, then a burst worker that runs the polls it enqueued (both with the given
    setting overrides)."""

    async def run(**overrides: Any) -> None:
        await polls.enqueue_due(pool, arq_queue, make_settings(**overrides))
        await make_worker(**overrides).main()

    return run


async def state(pool: asyncpg.Pool, url: str) -> dict[str, Any]:
    row = await pool.fetchrow(
        "SELECT *, extract(epoch FROM next_due_at - last_polled_at) AS due_in FROM sources "
        "WHERE url = $1",
        url,
    )
    assert row is not None
    return dict(row)


async def due_now(pool: asyncpg.Pool) -> None:
    await pool.execute("UPDATE sources SET next_due_at = now()")


async def test_etag_source_lands_once_then_304_until_it_changes(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """First poll lands a document; the next sends If-None-Match, gets 304 and lands nothing;
    after the upstream changes, the poll lands the new version."""
    upstream.feeds["e"] = Feed(etag=True)
    url = upstream.url("/feed/e")
    await sources.add(pool, [url], every=900, name="etag")
    await poll()
    first = await state(pool, url)
    assert (first["last_outcome"], first["etag"], first["poll_job_id"]) == ("changed", '"v1"', None)
    assert first["due_in"] == pytest.approx(900, abs=5)

    await due_now(pool)
    await poll()
    second = await state(pool, url)
    assert (second["last_outcome"], second["last_status"]) == ("not_modified", 304)
    assert upstream.hits[-1].headers["If-None-Match"] == '"v1"'
    assert await pool.fetchval("SELECT count(*) FROM documents") == 1

    upstream.feeds["e"].version = 2
    await due_now(pool)
    await poll()
    bodies = await pool.fetch("SELECT body->>'version' AS v, source FROM documents ORDER BY id")
    assert [(r["v"], r["source"]) for r in bodies] == [("1", "etag"), ("2", "etag")]
    assert (await state(pool, url))["etag"] == '"v2"'


async def test_unchanged_bodies_write_no_documents(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """Sources without validators that serve the same body again record unchanged: a second
    poll of 50 of them adds no document and keeps pointing at the first one."""
    urls = [upstream.url(f"/feed/u{i}") for i in range(50)]
    await sources.add(pool, urls, every=600, name=None)
    await poll()
    first_jobs = {r["document_job_id"] for r in await pool.fetch("SELECT * FROM sources")}
    await due_now(pool)
    await poll()
    assert await pool.fetchval("SELECT count(*) FROM documents") == 50
    rows = await pool.fetch("SELECT last_outcome, document_job_id FROM sources")
    assert {r["last_outcome"] for r in rows} == {"unchanged"}
    assert {r["document_job_id"] for r in rows} == first_jobs
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 0


async def test_failing_source_backs_off_then_recovers(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """Each failed poll doubles the delay and records a failure row; a success resets it."""
    upstream.feeds["f"] = Feed(status=404)
    url = upstream.url("/feed/f")
    await sources.add(pool, [url], every=60, name=None)
    seen = []
    for _ in range(3):
        await poll()
        s = await state(pool, url)
        seen.append((s["last_outcome"], s["consecutive_failures"], round(s["due_in"])))
        await due_now(pool)
    assert seen == [("http_status", 1, 120), ("http_status", 2, 240), ("http_status", 3, 480)]
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures WHERE url = $1", url) == 3

    upstream.feeds["f"].status = None
    await poll()
    s = await state(pool, url)
    assert (s["last_outcome"], s["consecutive_failures"], round(s["due_in"])) == ("changed", 0, 60)
    assert s["last_success_at"] is not None


async def test_cache_control_and_retry_after_push_the_next_poll(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """max-age=3600 on a 60 s source makes it due in an hour; a 429 with Retry-After: 7200
    makes it due in two."""
    upstream.feeds["m"] = Feed(max_age=3600)
    upstream.feeds["r"] = Feed(status=429, retry_after="7200")
    await sources.add(pool, [upstream.url("/feed/m"), upstream.url("/feed/r")], every=60, name=None)
    await poll(max_attempts=1)
    assert round((await state(pool, upstream.url("/feed/m")))["due_in"]) == 3600
    throttled = await state(pool, upstream.url("/feed/r"))
    assert (throttled["last_status"], round(throttled["due_in"])) == (429, 7200)


async def test_two_workers_with_cron_poll_each_due_source_once(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    upstream: Upstream,
) -> None:
    """Two workers running the poll cron every second fetch each due source exactly once,
    and keep polling what becomes due later."""
    settings = make_settings(sources_poll_seconds=1)
    urls = [upstream.url(f"/feed/two{i}") for i in range(40)]
    await sources.add(pool, urls, every=3600, name="two")
    workers = [create_worker(settings, handle_signals=False, poll_delay=0.05) for _ in range(2)]
    tasks = [asyncio.create_task(w.main()) for w in workers]

    async def all_polled(n: int) -> bool:
        return (
            await pool.fetchval("SELECT count(*) FROM sources WHERE last_polled_at IS NOT NULL")
            == n
        )

    try:
        await wait_until(lambda: all_polled(40), timeout=30)
        # A source added now is picked up by a later tick: the ticks kept running meanwhile.
        late = upstream.url("/feed/late")
        await sources.add(pool, [late], every=3600, name="two")
        await wait_until(lambda: all_polled(41), timeout=30)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in workers:
            await w.close()
    assert sorted(upstream.counts[f"/feed/two{i}"] for i in range(40)) == [1] * 40
    assert await pool.fetchval("SELECT count(*) FROM documents") == 41


async def test_a_post_source_polls_with_its_body_headers_and_credential(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    upstream: Upstream,
    credentials_file: Path,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> None:
    """The poll job carries the source's method, body, headers and profile name (never its
    secret); the upstream gets all of them and the bearer token. A POST is never conditional:
    the next poll fetches again, and the same answer lands nothing."""
    url = upstream.url("/echo/search")
    spec = sources.poll_spec(
        auth="bearer",
        request={"method": "POST", "json": {"q": "shoes"}, "headers": {"X-Tenant": "t1"}},
    )
    await sources.add(pool, [url], every=60, name="search", spec=spec)
    await polls.enqueue_due(pool, arq_queue, make_settings())
    (job,) = await arq_queue.queued_jobs()
    assert job.kwargs == {
        "requests": [
            {"url": url, "method": "POST", "json": {"q": "shoes"}, "headers": {"X-Tenant": "t1"}}
        ],
        "source": "search",
        "scheduled": True,
        "auth": "bearer",
    }
    await make_worker(credentials=credentials_file).main()
    await due_now(pool)
    await polls.enqueue_due(pool, arq_queue, make_settings())
    await make_worker(credentials=credentials_file).main()

    first, second = upstream.hits_for("/echo/search")
    for hit in (first, second):
        assert (hit.method, hit.body) == ("POST", b'{"q":"shoes"}')
        assert hit.headers["X-Tenant"] == "t1"
        assert hit.headers["Authorization"] == f"Bearer {SECRET_ENV['TEST_BEARER_TOKEN']}"
        assert "If-None-Match" not in hit.headers
    assert (await state(pool, url))["last_outcome"] == "unchanged"
    doc = await pool.fetchrow("SELECT url, method, request, source FROM documents")
    assert doc is not None
    assert dict(doc) == {
        "url": url,
        "method": "POST",
        "request": {"q": "shoes"},
        "source": "search",
    }
    stored = await pool.fetchval("SELECT string_agg(row_to_json(s)::text, '') FROM sources s")
    assert "bearer" in stored
    assert all(secret not in stored for secret in SECRET_ENV.values())


async def test_a_get_source_with_headers_stays_conditional(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """A GET source's headers go with every poll, and its polls stay conditional: 304."""
    upstream.feeds["h"] = Feed(etag=True)
    url = upstream.url("/feed/h")
    spec = sources.poll_spec(request={"headers": {"Accept": "application/vnd.x+json"}})
    await sources.add(pool, [url], every=900, name=None, spec=spec)
    await poll()
    await due_now(pool)
    await poll()
    first, second = upstream.hits_for("/feed/h")
    assert first.headers["Accept"] == second.headers["Accept"] == "application/vnd.x+json"
    assert second.headers["If-None-Match"] == '"v1"'
    assert (await state(pool, url))["last_outcome"] == "not_modified"
    assert await pool.fetchval("SELECT count(*) FROM documents") == 1


async def test_the_since_cursor_goes_from_one_poll_to_the_next(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """The first poll is sent as registered; the cursor its body holds goes out as ?since= on
    the next (replacing the URL's own value); a body without it keeps the cursor. Rows keep
    the source's URL."""
    url = upstream.url("/served/items?since=0&limit=5")
    upstream.served["items"] = (b'{"meta": {"cursor": "abc"}, "items": [1]}', "application/json")
    spec = sources.poll_spec(since_param="since", since_path="meta.cursor")
    await sources.add(pool, [url], every=60, name=None, spec=spec)
    await poll()
    assert (await state(pool, url))["since_value"] == "abc"

    upstream.served["items"] = (b'{"meta": {}, "items": [2]}', "application/json")
    await due_now(pool)
    await poll()
    assert (await state(pool, url))["since_value"] == "abc"
    await due_now(pool)
    await poll()

    sent = [parse_qs(urlsplit(h.path).query) for h in upstream.hits_for("/served/items")]
    assert sent == [
        {"since": ["0"], "limit": ["5"]},
        {"since": ["abc"], "limit": ["5"]},
        {"since": ["abc"], "limit": ["5"]},
    ]
    assert await pool.fetchval("SELECT array_agg(DISTINCT url) FROM documents") == [url]


async def test_a_paginated_source_lands_every_page_conditional_on_the_first(
    pool: asyncpg.Pool, poll: Poll, upstream: Upstream
) -> None:
    """A paginated poll lands each page as a row of the source's URL; its first page settles
    the source (ETag, cursor read from page 1, not page 3); the next poll sends the cursor and
    If-None-Match on page 1 only, gets 304 and walks no further."""
    url = upstream.url("/pages/link/s?n=3&etag=1")
    spec = sources.poll_spec(
        request={"paginate": {"next": "link"}}, since_param="since", since_path="items[0]"
    )
    await sources.add(pool, [url], every=60, name="paged", spec=spec)
    await poll()
    rows = await pool.fetch(
        "SELECT url, page, body->'items'->>0 AS first FROM documents ORDER BY page"
    )
    assert [(r["url"], r["page"], r["first"]) for r in rows] == [
        (url, 1, "10"),
        (url, 2, "20"),
        (url, 3, "30"),
    ]
    first = await state(pool, url)
    assert (first["last_outcome"], first["etag"], first["since_value"]) == (
        "changed",
        '"s-p1"',
        "10",
    )
    assert first["poll_job_id"] is None

    await due_now(pool)
    await poll()
    again = upstream.hits_for("/pages/link/s")[3:]
    assert len(again) == 1
    assert parse_qs(urlsplit(again[0].path).query)["since"] == ["10"]
    assert again[0].headers["If-None-Match"] == '"s-p1"'
    assert (await state(pool, url))["last_outcome"] == "not_modified"
    assert await pool.fetchval("SELECT count(*) FROM documents") == 3


async def test_sources_that_notify_different_urls_go_out_in_different_polls(
    pool: asyncpg.Pool, arq_queue: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    """A poll job has one notify_url: sources of one name told to different URLs (or none)
    are polled by different jobs, each carrying its own."""
    hooks = {
        "https://a.example/feed": "https://hooks.example/a",
        "https://b.example/feed": "https://hooks.example/b",
        "https://c.example/feed": None,
    }
    for url, hook in hooks.items():
        request = {} if hook is None else {"notify_url": hook}
        spec = sources.poll_spec(name="feeds", request=request, webhooks=True)
        await sources.add(pool, [url], every=60, name="feeds", spec=spec)
    enqueued = await polls.enqueue_due(pool, arq_queue, make_settings())
    assert len(enqueued.jobs) == 3
    polled = {
        job.kwargs["urls"][0]: job.kwargs.get("notify_url") for job in await arq_queue.queued_jobs()
    }
    assert polled == hooks
