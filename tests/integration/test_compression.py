"""Compression: harvester asks for gzip, deflate, br and zstd, inflates each, and cuts a bomb in
any of them at the decompressed cap without holding more than about the cap."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import asyncpg
import orjson
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers.upstream import ENCODINGS, Upstream, bomb
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import Failed, Fetched
from worker.queue.client import enqueue_urls
from worker.settings import Settings

CAP = 1024 * 1024


async def test_every_request_offers_gzip_deflate_br_and_zstd(
    upstream: Upstream, settings: Settings, make_fetcher: Callable[[Settings], Fetcher]
) -> None:
    """Accept-Encoding lists all four (aiohttp offers br and zstd only when it can decode them)."""
    out = await make_fetcher(settings).fetch(upstream.url("/json/enc"))
    assert isinstance(out, Fetched)
    [hit] = upstream.hits_for("/json/enc")
    assert hit.headers["Accept-Encoding"] == "gzip, deflate, br, zstd"


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_each_encoding_is_decompressed(
    encoding: str,
    upstream: Upstream,
    settings: Settings,
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """A body in each Content-Encoding lands as the JSON it encodes."""
    out = await make_fetcher(settings).fetch(upstream.url(f"/encoded/{encoding}/e"))
    assert isinstance(out, Fetched), out
    assert orjson.loads(out.body) == {"name": "e", "items": list(range(10))}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
async def test_a_bomb_in_each_encoding_is_cut_at_the_cap_in_bounded_memory(
    encoding: str,
    upstream: Upstream,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """A small body that inflates to 64 MiB is too_large, and only about the 1 MiB cap is ever
    held while it is read."""
    bomb(encoding)  # built before tracing: the upstream's memory, not the fetcher's
    fetcher = make_fetcher(make_settings(max_body_bytes=CAP))
    tracemalloc.start()
    try:
        out = await fetcher.fetch(upstream.url(f"/bomb/{encoding}"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(out, Failed), out
    assert (out.kind, out.attempts) == ("too_large", 1)
    assert "after decompression" in out.detail
    assert peak < 4 * CAP, peak


async def test_bombs_land_as_failures_and_nothing_is_stored(
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """Through a worker, each bomb is one too_large failure row; no document is stored."""
    urls = [upstream.url(f"/bomb/{encoding}") for encoding in sorted(ENCODINGS)]
    [job_id] = await enqueue_urls(arq_queue, urls, job_id_prefix="bombs")
    worker = make_worker(max_body_bytes=CAP)
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    failures = await pool.fetch(
        "SELECT url, error, status FROM fetch_failures WHERE job_id = $1", job_id
    )
    assert {(r["url"], r["error"], r["status"]) for r in failures} == {
        (u, "too_large", 200) for u in urls
    }
    assert await pool.fetchval("SELECT count(*) FROM documents") == 0
