"""The change stream: each landed chunk appended to the capped Redis stream, read by XREAD; a
stream that cannot be written never fails or holds up a job."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import orjson
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import wait_until
from tests.helpers.upstream import Upstream
from worker.engine import counters
from worker.queue.client import enqueue_batch
from worker.queue.payload import make_batch

STREAM = "harvester:events"


async def test_xread_sees_each_landed_chunk(
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """A job cut in chunks of two: XREAD from the start gets an entry per chunk, whose counts
    add up to the job's outcomes by kind."""
    urls = [upstream.url(f"/json/{i}") for i in range(4)] + [upstream.url("/status/404")]
    await enqueue_batch(arq_queue, make_batch(urls=urls, source="ev"), job_id="ev-1")
    worker = make_worker(copy_chunk_rows=2, events_maxlen=1000)
    await worker.async_run()
    assert worker.jobs_complete == 1

    async def read_all() -> list[dict[str, str]]:
        replies = await redis.xread({STREAM: "0-0"}, count=100)
        entries = replies[0][1] if replies else []
        return [{k.decode(): v.decode() for k, v in e.items()} for _, e in entries]

    async def all_told() -> bool:
        # Entries are written in the background: the last may follow the job's end.
        return sum(int(e["urls"]) for e in await read_all()) >= 5

    await wait_until(all_told)
    read = await read_all()
    assert len(read) >= 3  # five outcomes, two rows a chunk
    assert {e["job_id"] for e in read} == {"ev-1"}
    assert {e["source"] for e in read} == {"ev"}
    assert sum(int(e["urls"]) for e in read) == 5
    assert sum(int(e["documents"]) for e in read) == 4
    failures = [orjson.loads(e["failures"]) for e in read]
    assert sum(f.get("http_status", 0) for f in failures) == 1


async def test_a_stream_redis_refuses_costs_events_never_the_job(
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """The stream's key holds a string (XADD answers WRONGTYPE): the job completes with every
    row, and the lost events are counted."""
    await redis.set(STREAM, "not a stream")
    lost = counters.EVENTS_LOST._value.get()
    urls = [upstream.url(f"/json/{i}") for i in range(3)]
    await enqueue_batch(arq_queue, make_batch(urls=urls), job_id="ev-2")
    worker = make_worker()
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE job_id = 'ev-2'") == 3

    async def counted() -> bool:  # the refused XADD is sent in the background
        return bool(counters.EVENTS_LOST._value.get() > lost)

    await wait_until(counted)
