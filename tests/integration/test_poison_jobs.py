"""Poison jobs: whatever is written into the queue, one worker keeps running and lands the rest.

Raw-Redis jobs whose arq envelope is malformed used to raise inside arq's worker loop, outside
its error handling: the process exited, the job stayed queued, and every worker that took it
next died too. Here every bad shape goes through one in-process worker, one after another, and
a good job enqueued after them must still land.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from arq.jobs import Job
from arq.worker import Worker, func

from jobs.poll_sources import poll_sources
from tests.helpers import TEST_QUEUE
from tests.helpers.upstream import Upstream
from worker.queue import rejections
from worker.queue.serialization import RemoteJobError, deserialize
from worker.runtime.app import create_worker
from worker.settings import Settings

BAD_ENVELOPES: dict[str, dict[str, Any] | bytes] = {
    "f-list": {"f": ["fetch_batch"]},
    "f-object": {"f": {"name": "fetch_batch"}},
    "t-string": {"t": "2"},
    "t-object": {"t": {"n": 1}},
    "et-null": {"et": None},
    "et-string": {"et": "soon"},
    "et-huge": {"et": 1e300},
    "a-object": {"a": {"x": 1}},
    "k-list": {"k": ["urls"]},
    "not-an-object": b"[1, 2, 3]",
    "not-json": b"\x80\x04\x95pickle",
    "missing-keys": b'{"f": "fetch_batch"}',
}


async def _put(redis: aioredis.Redis, job_id: str, data: bytes, when: int) -> None:
    await redis.set(f"arq:job:{job_id}", data)
    await redis.zadd(TEST_QUEUE, {job_id: when})


async def test_one_worker_outlives_every_bad_envelope_then_lands_a_good_job(
    redis: aioredis.Redis,
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
    arq_queue: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each malformed job fails alone with a result saying what was wrong and one log line
    without a traceback; the same worker then lands a good job enqueued after them."""
    now = int(time.time() * 1000)
    good = {"t": None, "f": "fetch_batch", "a": [], "k": {"urls": []}, "et": now}
    for n, (name, bad) in enumerate(BAD_ENVELOPES.items()):
        data = bad if isinstance(bad, bytes) else orjson.dumps({**good, **bad})
        await _put(redis, f"bad-{name}", data, now + n)
    job = {**good, "k": {"urls": [upstream.url("/json/after")]}}
    await _put(redis, "good-after", orjson.dumps(job), now + 100)

    worker = make_worker()
    with caplog.at_level(logging.INFO):
        await worker.main()  # before the fix, this raised on the first bad job

    assert (worker.jobs_complete, worker.jobs_failed) == (1, len(BAD_ENVELOPES))
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE job_id = 'good-after'") == 1
    for name in BAD_ENVELOPES:
        info = await Job(
            f"bad-{name}", arq_queue, _queue_name=TEST_QUEUE, _deserializer=deserialize
        ).result_info()
        assert info is not None, name
        assert isinstance(info.result, RemoteJobError), name
        assert "unable to deserialize job" in str(info.result), name
    invalid = [r for r in caplog.records if r.getMessage() == "job.invalid"]
    assert len(invalid) == len(BAD_ENVELOPES)
    assert all(r.exc_info is None for r in invalid)
    assert await redis.zcard(TEST_QUEUE) == 0
    # Listed with the refused jobs, where `harvester status` finds them (they land no row).
    listed = {job_id for job_id, _ in await rejections.since(redis, TEST_QUEUE, 0)}
    assert listed == {f"bad-{name}" for name in BAD_ENVELOPES}


@pytest.mark.parametrize("t", [21, 999])
async def test_an_enqueue_time_try_count_does_not_decide_the_jobs_fate(
    t: int,
    redis: aioredis.Redis,
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
) -> None:
    """A raw job sent with t = 21 (over HARVESTER_JOB_TRIES) or 999 (over arq's own limit)
    is fetched like any other: its URLs land as documents, not abandoned or lost."""
    now = int(time.time() * 1000)
    urls = [upstream.url("/json/t1"), upstream.url("/json/t2")]
    job = {"t": t, "f": "fetch_batch", "a": [], "k": {"urls": urls}, "et": now}
    await _put(redis, f"raw-t{t}", orjson.dumps(job), now)
    await make_worker().main()
    rows = await pool.fetch("SELECT url FROM documents WHERE job_id = $1", f"raw-t{t}")
    assert sorted(r["url"] for r in rows) == sorted(urls)
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 0


async def test_an_error_outside_arqs_own_handling_costs_the_job_not_the_worker(
    redis: aioredis.Redis,
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
) -> None:
    """An exception raised in arq's job-run path outside its try (here from an on_job_start
    hook) fails that job; the worker goes on and lands the next one."""

    async def explode_for_one_job(ctx: dict[str, Any]) -> None:
        if ctx["job_id"] == "explodes":
            raise RuntimeError("boom outside arq's handling")

    now = int(time.time() * 1000)
    for n, job_id in enumerate(("explodes", "lands")):
        job = {
            "t": None,
            "f": "fetch_batch",
            "a": [],
            "k": {"urls": [upstream.url(f"/json/{job_id}")]},
            "et": now,
        }
        await _put(redis, job_id, orjson.dumps(job), now + n)
    worker = create_worker(
        make_settings(),
        burst=True,
        poll_delay=0,
        handle_signals=False,
        cron_jobs=[],
        on_job_start=explode_for_one_job,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 1)
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE job_id = 'lands'") == 1
    assert await redis.zcard(TEST_QUEUE) == 0
    assert [job_id for job_id, _ in await rejections.since(redis, TEST_QUEUE, 0)] == ["explodes"]


async def test_a_cron_task_enqueued_by_hand_is_refused(
    redis: aioredis.Redis,
    pool: asyncpg.Pool,
    arq_queue: Any,
    make_worker: Callable[..., Worker],
) -> None:
    """Anyone who can write raw jobs could run poll_sources (or retention) on demand under any
    id; a cron task now runs only as one of its own ticks."""
    now = int(time.time() * 1000)
    job = {"t": None, "f": f"cron:{TEST_QUEUE}:poll_sources", "a": [], "k": {}, "et": now}
    await _put(redis, "on-demand", orjson.dumps(job), now)
    await pool.execute("INSERT INTO sources (url) VALUES ('http://127.0.0.1:9/feed')")
    worker = make_worker()
    # Registered as in production (under its cron name), without ticking during the test.
    name = f"cron:{TEST_QUEUE}:poll_sources"
    worker.functions[name] = func(poll_sources, name=name)  # type: ignore[arg-type]
    await worker.main()
    info = await Job(
        "on-demand", arq_queue, _queue_name=TEST_QUEUE, _deserializer=deserialize
    ).result_info()
    assert info is not None
    assert "runs only on its schedule" in str(info.result)
    assert await pool.fetchval("SELECT count(*) FROM sources WHERE poll_job_id IS NOT NULL") == 0


async def test_a_cron_tick_out_of_tries_is_not_listed_with_refused_jobs(
    redis: aioredis.Redis, arq_queue: Any, make_worker: Callable[..., Worker]
) -> None:
    """A tick cut short (a kill, a shutdown) starts again and fails as out of tries; that is no
    job a caller sent, and the next tick does its work: it stays off status' refused jobs,
    while a batch out of tries is listed."""
    name = f"cron:{TEST_QUEUE}:poll_sources"
    now = int(time.time() * 1000)
    tick, batch = f"{name}:{now}", "batch-out-of-tries"
    await _put(redis, tick, orjson.dumps({"t": None, "f": name, "a": [], "k": {}, "et": now}), now)
    job = {"t": None, "f": "fetch_batch", "a": [], "k": {"urls": []}, "et": now}
    await _put(redis, batch, orjson.dumps(job), now + 1)
    for job_id in (tick, batch):
        await redis.set(f"arq:retry:{job_id}", 1_000)  # started that often already
    worker = make_worker()
    worker.functions[name] = func(poll_sources, name=name, max_tries=1)  # type: ignore[arg-type]
    await worker.main()
    for job_id in (tick, batch):
        info = await Job(
            job_id, arq_queue, _queue_name=TEST_QUEUE, _deserializer=deserialize
        ).result_info()
        assert info is not None, job_id
        assert "retries exceeded" in str(info.result), job_id
    assert [job_id for job_id, _ in await rejections.since(redis, TEST_QUEUE, 0)] == [batch]
