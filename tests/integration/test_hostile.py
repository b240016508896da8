"""Hostile upstreams: each misbehaviour ends as the right failure kind; the rest of the batch lands."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers.hostile import Hostile
from tests.helpers.upstream import Upstream, gzip_bomb
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import Failed
from worker.queue.client import enqueue_urls
from worker.settings import Settings

HOSTILE_SETTINGS = {
    "request_timeout": 3,
    "read_timeout": 1,
    "retry_max_time": 2,
    "max_body_bytes": 1024 * 1024,
    "max_redirects": 3,
}


@pytest.fixture
async def hostile() -> AsyncIterator[Hostile]:
    server = Hostile()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_one_batch_of_every_misbehaviour(
    upstream: Upstream,
    hostile: Hostile,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
) -> None:
    """Slow-loris, resets, truncation, bombs, bad encodings, bad redirects, next to good URLs."""
    expected = {
        hostile.url("/slowloris-headers"): ("timeout", None),
        hostile.url("/slowloris-body"): ("timeout", None),
        # aiohttp itself may resend once on a reset keep-alive connection: attempts 1 or 2.
        hostile.url("/reset/r1?fails=1"): ("document", None),
        hostile.url("/truncated/t1?fails=1"): ("document", 2),
        hostile.url("/reset/r2?fails=99"): ("connect", None),
        hostile.url("/endless"): ("too_large", 1),
        hostile.url("/bad-utf8"): ("invalid_json", 1),
        hostile.url("/latin1-reason"): ("http_status", 1),
        upstream.url("/gzip-bomb"): ("too_large", 1),
        upstream.url("/nul"): ("invalid_json", 1),
        upstream.url("/html"): ("content_type", 1),
        upstream.url("/loop"): ("redirect", 1),
        upstream.url("/redirect-to?location=ftp://example.com/x"): ("redirect", 1),
        upstream.url("/redirect-to?location=http://169.254.169.254/latest/meta-data/"): (
            "blocked",
            1,
        ),
        upstream.url("/redirect-to?location=http://10.0.0.1/"): ("blocked", 1),
    }
    good = [upstream.url(f"/json/good{i}") for i in range(5)]
    [job_id] = await enqueue_urls(arq_queue, [*expected, *good], job_id_prefix="hostile")
    worker = make_worker(**HOSTILE_SETTINGS)
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)

    rows = await pool.fetch(
        """SELECT url, 'document' AS kind, attempts FROM documents WHERE job_id = $1
           UNION ALL SELECT url, error, attempts FROM fetch_failures WHERE job_id = $1""",
        job_id,
    )
    got = {r["url"]: (r["kind"], r["attempts"]) for r in rows}
    assert len(rows) == len(expected) + len(good)
    for url, (kind, attempts) in expected.items():
        assert got[url][0] == kind, (url, got[url])
        if attempts is not None:
            assert got[url][1] == attempts, (url, got[url])
    assert all(got[u] == ("document", 1) for u in good)
    assert hostile.counts["/reset/r1"] == 2  # reset once, then served


async def test_bombs_and_endless_bodies_are_cut_without_buffering(
    upstream: Upstream, hostile: Hostile, make_settings: Callable[..., Settings]
) -> None:
    """Memory stays near the 1 MiB cap while a 64 MiB bomb and an endless body are refused."""
    from worker.engine.session import create_session

    gzip_bomb()  # built before tracing: it is the upstream's memory, not the fetcher's
    s = make_settings(**HOSTILE_SETTINGS)
    session = create_session(s)
    try:
        fetcher = Fetcher(session, s)
        tracemalloc.start()
        try:
            bomb = await fetcher.fetch(upstream.url("/gzip-bomb"))
            endless = await fetcher.fetch(hostile.url("/endless"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        await session.close()
    assert isinstance(bomb, Failed)
    assert bomb.kind == "too_large"
    assert isinstance(endless, Failed)
    assert endless.kind == "too_large"
    # Both bodies are far larger than the cap; only about a cap's worth is ever held.
    assert peak < 4 * HOSTILE_SETTINGS["max_body_bytes"], peak
