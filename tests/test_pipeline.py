"""The pipeline core, without arq: one outcome per distinct URL, streamed into Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.helpers import wait_until
from tests.upstream import Upstream
from worker import pipeline, store
from worker.fetch import Failed, Fetcher
from worker.settings import Settings

RunBatch = Callable[..., Awaitable[pipeline.BatchSummary]]


@pytest.fixture
def run_batch(
    pool: asyncpg.Pool, settings: Settings, make_fetcher: Callable[[Settings], Fetcher]
) -> RunBatch:
    """pipeline.run on the test pool with a fresh fetcher; settings default to the test's."""

    def run(
        job_id: str, urls: list[str], *, settings: Settings = settings, **options: Any
    ) -> Awaitable[pipeline.BatchSummary]:
        options.setdefault("source", None)
        return pipeline.run(
            job_id=job_id,
            urls=urls,
            fetcher=make_fetcher(settings),
            pool=pool,
            settings=settings,
            **options,
        )

    return run


async def test_every_distinct_url_gets_exactly_one_outcome(
    upstream: Upstream,
    pool: asyncpg.Pool,
    run_batch: RunBatch,
) -> None:
    """Good URLs become documents, bad ones failures; duplicates in a batch land once."""
    good = [upstream.url(f"/json/{i}") for i in range(50)]
    bad = [upstream.url("/status/404"), upstream.url("/invalid-json"), "nope"]
    urls = good + bad + good[:5]
    summary = await run_batch("p1", urls, source="t")
    assert (summary.urls, summary.distinct_urls, summary.documents) == (58, 53, 50)
    assert summary.failures == {"http_status": 1, "invalid_json": 1, "invalid_url": 1}
    landed = await pool.fetch(
        "SELECT url FROM documents WHERE job_id='p1' UNION ALL SELECT url FROM fetch_failures WHERE job_id='p1'"
    )
    assert sorted(r["url"] for r in landed) == sorted(set(urls))


async def test_rerun_skips_urls_that_already_have_an_outcome(
    upstream: Upstream,
    pool: asyncpg.Pool,
    run_batch: RunBatch,
) -> None:
    """An interrupted job's landed URLs are not fetched again, so no URL ends in both tables."""
    done = upstream.url("/json/done")
    await store.write_chunk(pool, "p2", None, [], [Failed(done, "timeout", "timed out", None, 3)])
    summary = await run_batch("p2", [done, upstream.url("/json/new")])
    assert (summary.already_done, summary.documents) == (1, 1)
    assert upstream.counts["/json/done"] == 0
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE url = $1", done) == 0


async def test_rows_land_while_fetching_continues(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    run_batch: RunBatch,
) -> None:
    """Chunks are written as they fill, before the slowest URL of the batch has answered."""
    s = make_settings(copy_chunk_rows=10, writers=1)
    # 45 is not a multiple of the chunk: the last 5 land through the flush interval.
    urls = [upstream.url(f"/json/{i}") for i in range(45)] + [upstream.url("/gate/last")]
    run = asyncio.create_task(run_batch("p3", urls, settings=s))

    async def all_but_one_landed() -> bool:
        return await pool.fetchval("SELECT count(*) FROM documents WHERE job_id='p3'") == 45

    try:
        await wait_until(all_but_one_landed)
        assert not run.done()
    finally:
        upstream.gate.set()
    summary = await run
    assert summary.documents == 46


async def test_malformed_hosts_do_not_sink_the_batch(
    upstream: Upstream,
    pool: asyncpg.Pool,
    run_batch: RunBatch,
) -> None:
    """URLs whose host names IDNA refuses fail alone; the good ones around them land."""
    urls = [upstream.url("/json/1"), "http://a..b/", "http://xn--a.com/", upstream.url("/json/2")]
    summary = await run_batch("p4", urls)
    assert summary.documents == 2
    assert summary.failures == {"invalid_url": 2}


async def test_bodies_larger_than_the_buffer_still_flow(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    run_batch: RunBatch,
) -> None:
    """The byte budget between fetchers and writers lets one oversized body through at a time."""
    s = make_settings(buffer_bytes=160 * 1024, copy_chunk_bytes=16 * 1024, writers=2)
    urls = [upstream.url(f"/big?size=200000&n={i}") for i in range(12)]
    summary = await run_batch("p5", urls, settings=s)
    assert summary.documents == 12


async def test_deadline_keeps_what_landed_and_reports_the_rest(
    upstream: Upstream,
    pool: asyncpg.Pool,
    run_batch: RunBatch,
) -> None:
    """At the deadline, fetched rows land and DeadlineError counts the URLs still to do."""
    import time

    urls = [upstream.url(f"/json/{i}") for i in range(10)] + [
        upstream.url(f"/gate/g{i}") for i in range(3)
    ]

    async def ten_fetched() -> bool:
        return sum(upstream.counts[f"/json/{i}"] for i in range(10)) == 10

    with pytest.raises(pipeline.DeadlineError) as info:
        await run_batch("p6", urls, deadline=time.monotonic() + 1.0)
    assert await ten_fetched()
    assert (info.value.landed, info.value.remaining) == (10, 3)
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE job_id='p6'") == 10


async def test_deadline_on_the_last_try_records_the_rest(
    upstream: Upstream,
    pool: asyncpg.Pool,
    run_batch: RunBatch,
) -> None:
    """With record_unfinished, the URLs left at the deadline get 'deadline' failure rows."""
    import time

    urls = [upstream.url("/json/a")] + [upstream.url(f"/gate/h{i}") for i in range(3)]
    summary = await run_batch("p7", urls, deadline=time.monotonic() + 1.0, record_unfinished=True)
    assert summary.documents == 1
    assert summary.failures == {"deadline": 3}
    kinds = await pool.fetch("SELECT error FROM fetch_failures WHERE job_id='p7'")
    assert [r["error"] for r in kinds] == ["deadline"] * 3
