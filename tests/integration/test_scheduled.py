"""Scheduled sources end to end: cron claims, conditional polls, change detection, backoff."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import wait_until
from tests.helpers.upstream import Feed, Upstream
from worker.runtime.app import create_worker
from worker.scheduling import sources
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
        await sources.enqueue_due(pool, arq_queue, make_settings(**overrides))
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
