"""The pipeline core, without arq: one outcome per distinct URL, streamed into Postgres."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from tests.helpers import wait_until
from tests.helpers.upstream import Upstream
from worker.engine import pipeline
from worker.engine.bodies import PARSE_MAX_BYTES
from worker.engine.chunks import Chunk
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import BatchSummary, Failed, Fetched
from worker.engine.requests import Request
from worker.engine.writes import write_chunk
from worker.settings import Settings

RunBatch = Callable[..., Awaitable[BatchSummary]]


@pytest.fixture
def run_batch(
    pool: asyncpg.Pool, settings: Settings, make_fetcher: Callable[[Settings], Fetcher]
) -> RunBatch:
    """pipeline.run on the test pool with a fresh fetcher; settings default to the test's."""

    def run(
        job_id: str, urls: list[str], *, settings: Settings = settings, **options: Any
    ) -> Awaitable[BatchSummary]:
        options.setdefault("source", None)
        batch = pipeline.Batch(job_id=job_id, requests=[Request(u) for u in urls], **options)
        return pipeline.run(batch, fetcher=make_fetcher(settings), pool=pool, settings=settings)

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
    failed = Failed(done, "timeout", "timed out", None, 3)
    await write_chunk(pool, Chunk("p2", None, fails=[failed]), max_url_length=8192)
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


async def test_a_body_of_huge_exponents_is_refused_and_the_rest_lands(
    upstream: Upstream,
    pool: asyncpg.Pool,
    run_batch: RunBatch,
) -> None:
    """[1e-16383, ...] (5 KB stored, ~10 MB read back) ends as an invalid_json failure row, the
    rest of the batch lands, and every documents row reads back as text."""
    upstream.served["exp"] = (b"[" + b",".join([b"1e-16383"] * 600) + b"]", "application/json")
    good = [upstream.url(f"/json/{i}") for i in range(5)]
    summary = await run_batch("amp", [*good[:2], upstream.url("/served/exp"), *good[2:]])
    assert (summary.documents, summary.failures) == (5, {"invalid_json": 1})
    row = await pool.fetchrow("SELECT url, detail FROM fetch_failures WHERE job_id = 'amp'")
    assert row["url"] == upstream.url("/served/exp")
    assert "exponent -16383" in row["detail"]
    texts = await pool.fetch("SELECT body::text AS text FROM documents")
    assert len(texts) == 5
    assert sum(len(r["text"]) for r in texts) < 1000


LARGE = 2 * PARSE_MAX_BYTES  # over the size up to which bodies are parsed in Python


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[" + b"{}," * (LARGE // 3), "application/json"),  # cut short
        (b"<html>" + b"<p>not json</p>" * (LARGE // 15) + b"</html>", "text/plain"),
        (b"[" + b'"x",' * (LARGE // 4) + b"<html>]", "text/plain"),
        (b'["' + b"\xff" * LARGE + b'"]', "application/json"),  # not UTF-8
        (b'["' + b"a" * LARGE + b'\\ud800"]', "application/json"),  # lone surrogate
        (b'["' + b"a" * LARGE + b'\\u0000"]', "application/json"),
        (b"[" * LARGE + b"]" * LARGE, "application/json"),  # deeper than Postgres' stack
        (b"[" + b"1e-999," * (LARGE // 7) + b"0]", "application/json"),
    ],
    ids=["truncated", "html", "html-late", "bad-utf8", "surrogate", "nul", "deep", "exponents"],
)
async def test_a_large_body_that_is_not_storable_json_fails_alone(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    run_batch: RunBatch,
    body: bytes,
    content_type: str,
) -> None:
    """A body too large to parse in Python that Postgres refuses is an invalid_json failure for
    its URL only; the valid bodies fetched with it, large ones included, land in the same run."""
    upstream.served["bad"] = (body, content_type)
    upstream.served["big"] = (b"[" + b"{}," * (LARGE // 3) + b"{}]", "application/json")
    # One chunk for the whole batch, so the refused body is written with the good ones.
    s = make_settings(copy_chunk_bytes=8 * 1024 * 1024, buffer_bytes=48 * 1024 * 1024)
    good = [upstream.url(f"/json/{i}") for i in range(3)]
    urls = [good[0], upstream.url("/served/bad"), upstream.url("/served/big"), *good[1:]]
    summary = await run_batch("large", urls, settings=s)
    assert (summary.documents, summary.failures) == (4, {"invalid_json": 1})
    row = await pool.fetchrow("SELECT url, error FROM fetch_failures WHERE job_id = 'large'")
    assert (row["url"], row["error"]) == (upstream.url("/served/bad"), "invalid_json")


async def test_overlong_urls_are_stored_short_and_a_rerun_adds_nothing(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    run_batch: RunBatch,
) -> None:
    """Two distinct 100 KB URLs land as two invalid_url rows whose url is short and distinct;
    the same job run again adds no row and fetches nothing."""
    s = make_settings(max_url_length=2048)
    first = upstream.url("/json/a?q=" + "a" * 100_000)
    second = first[:-1] + "b"  # the same first 100 KB but one character
    urls = [first, second, upstream.url("/json/ok")]
    summary = await run_batch("long", urls, settings=s)
    assert (summary.documents, summary.failures) == (1, {"invalid_url": 2})
    stored = [r["url"] for r in await pool.fetch("SELECT url FROM fetch_failures")]
    assert len(set(stored)) == 2
    assert all(len(u) < 1200 and u.startswith(first[:1000]) for u in stored), stored
    hits = len(upstream.hits)

    again = await run_batch("long", urls, settings=s)
    assert (again.already_done, again.documents, again.failed) == (3, 0, 0)
    assert len(upstream.hits) == hits
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 2
    assert await pool.fetchval("SELECT count(*) FROM documents") == 1


async def test_failures_recorded_for_overlong_urls_are_short_and_recorded_once(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """record_failures (abandoned or deadline rows) stores an over-long URL short, and a second
    call for the same URLs records nothing."""
    s = make_settings(max_url_length=2048)
    urls = [Request("http://example.com/?q=" + "x" * 100_000), Request("http://example.com/short")]
    job = Chunk("gone", None)
    assert await pipeline.record_failures(pool, job, urls, s, kind="abandoned", detail="x") == 2
    assert await pipeline.record_failures(pool, job, urls, s, kind="abandoned", detail="x") == 0
    lengths = [r["n"] for r in await pool.fetch("SELECT length(url) AS n FROM fetch_failures")]
    assert sorted(lengths) == [len(urls[1].url), 1024 + len("…#sha256=") + 64]


async def test_a_landed_body_is_not_kept_alive_while_the_next_url_is_fetched(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    run_batch: RunBatch,
) -> None:
    """Once its row has landed, a body is referenced by nothing in the run, while the same
    fetcher and writer wait on the next URL (the byte budget no longer counts it)."""
    s = make_settings(concurrency=1, per_host=1)
    first = upstream.url("/json/first")
    run = asyncio.create_task(run_batch("stale", [first, upstream.url("/gate/next")], settings=s))

    async def landed_and_let_go() -> bool:
        landed = await pool.fetchval("SELECT count(*) FROM documents WHERE job_id = 'stale'")
        held = [o for o in gc.get_objects() if isinstance(o, Fetched) and o.url == first]
        return landed == 1 and not held and not run.done()

    try:
        await wait_until(landed_and_let_go)
    finally:
        upstream.gate.set()
    assert (await run).documents == 2
