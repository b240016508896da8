"""The pipeline core, without arq: one outcome per distinct URL, streamed into Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from tests.helpers import wait_until
from tests.upstream import Upstream
from worker import pipeline, store
from worker.fetch import Failed, Fetcher
from worker.settings import Settings


async def test_every_distinct_url_gets_exactly_one_outcome(
    upstream: Upstream,
    pool: asyncpg.Pool,
    settings: Settings,
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Good URLs become documents, bad ones failures; duplicates in a batch land once."""
    good = [upstream.url(f"/json/{i}") for i in range(50)]
    bad = [upstream.url("/status/404"), upstream.url("/invalid-json"), "nope"]
    urls = good + bad + good[:5]
    summary = await pipeline.run(
        job_id="p1",
        urls=urls,
        source="t",
        fetcher=make_fetcher(settings),
        pool=pool,
        settings=settings,
    )
    assert (summary.urls, summary.distinct_urls, summary.documents) == (58, 53, 50)
    assert summary.failures == {"http_status": 1, "invalid_json": 1, "invalid_url": 1}
    landed = await pool.fetch(
        "SELECT url FROM documents WHERE job_id='p1' UNION ALL SELECT url FROM fetch_failures WHERE job_id='p1'"
    )
    assert sorted(r["url"] for r in landed) == sorted(set(urls))


async def test_rerun_skips_urls_that_already_have_an_outcome(
    upstream: Upstream,
    pool: asyncpg.Pool,
    settings: Settings,
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """An interrupted job's landed URLs are not fetched again, so no URL ends in both tables."""
    done = upstream.url("/json/done")
    await store.write_chunk(pool, "p2", None, [], [Failed(done, "timeout", "timed out", None, 3)])
    summary = await pipeline.run(
        job_id="p2",
        urls=[done, upstream.url("/json/new")],
        source=None,
        fetcher=make_fetcher(settings),
        pool=pool,
        settings=settings,
    )
    assert (summary.already_done, summary.documents) == (1, 1)
    assert upstream.counts["/json/done"] == 0
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE url = $1", done) == 0


async def test_rows_land_while_fetching_continues(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Chunks are written as they fill, before the slowest URL of the batch has answered."""
    s = make_settings(copy_chunk_rows=10, writers=1)
    urls = [upstream.url(f"/json/{i}") for i in range(40)] + [upstream.url("/gate/last")]
    run = asyncio.create_task(
        pipeline.run(
            job_id="p3", urls=urls, source=None, fetcher=make_fetcher(s), pool=pool, settings=s
        )
    )

    async def forty_landed() -> bool:
        return await pool.fetchval("SELECT count(*) FROM documents WHERE job_id='p3'") >= 40

    try:
        await wait_until(forty_landed)
        assert not run.done()
    finally:
        upstream.gate.set()
    summary = await run
    assert summary.documents == 41
