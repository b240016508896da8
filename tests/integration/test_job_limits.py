"""A job's own limits: arq's timeout and its number of tries never leave a URL without an outcome."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
import orjson
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import wait_until
from tests.helpers.upstream import Upstream
from worker.queue.client import enqueue_urls

SHORT = {
    "job_timeout": 5,
    "request_timeout": 3,
    "retry_max_time": 1,
    "concurrency": 2,
    "per_host": 2,
}


async def _kinds(pool: asyncpg.Pool, job_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        """SELECT 'document' AS kind, count(*) AS n FROM documents WHERE job_id = $1
           UNION ALL SELECT error, count(*) FROM fetch_failures WHERE job_id = $1 GROUP BY error""",
        job_id,
    )
    return {r["kind"]: r["n"] for r in rows if r["n"]}


async def _streamed(redis: aioredis.Redis, job_id: str) -> tuple[int, dict[str, int]]:
    """The outcomes and failures by kind that the change stream says ``job_id`` landed."""
    replies = await redis.xread({"harvester:events": "0-0"}, count=1000)
    entries = replies[0][1] if replies else []
    read = [{k.decode(): v.decode() for k, v in e.items()} for _, e in entries]
    mine = [e for e in read if e["job_id"] == job_id]
    kinds: dict[str, int] = {}
    for e in mine:
        for kind, n in orjson.loads(e["failures"]).items():
            kinds[kind] = kinds.get(kind, 0) + n
    return sum(int(e["urls"]) for e in mine), kinds


async def _told(redis: aioredis.Redis, job_id: str, urls: int) -> bool:
    """Whether the stream has told of ``urls`` outcomes of ``job_id`` (its entries are written in
    the background: the last may follow the job's end)."""
    return (await _streamed(redis, job_id))[0] >= urls


async def test_job_that_would_hit_arqs_timeout_continues_then_records_the_rest(
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
) -> None:
    """Try 1 stops before the timeout and re-queues; the last try records what is left."""
    # 2 at a time, 1.5 s each, against a 4 s deadline per try: two tries cannot land them all.
    urls = [upstream.url(f"/json/{i}") for i in range(10)] + [
        upstream.url(f"/slow/{i}?delay=1.5") for i in range(12)
    ]
    [job_id] = await enqueue_urls(arq_queue, urls, job_id_prefix="slow")
    worker = make_worker(job_tries=2, **SHORT)
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_retried, worker.jobs_failed) == (1, 1, 0)
    kinds = await _kinds(pool, job_id)
    assert set(kinds) == {"document", "deadline"}
    assert kinds["document"] + kinds["deadline"] == 22
    assert kinds["document"] >= 10 + 2  # each try landed slow URLs before its deadline
    assert upstream.counts["/json/0"] == 1  # the second try did not fetch landed URLs again
    # The change stream tells of every outcome, the deadline failures included.
    await wait_until(lambda: _told(redis, job_id, 22))
    assert await _streamed(redis, job_id) == (22, {"deadline": kinds["deadline"]})


async def test_job_started_too_often_records_its_urls_as_abandoned(
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
) -> None:
    """Past HARVESTER_JOB_TRIES starts (restarts, crashes), the job closes with a row per URL."""
    urls = [upstream.url(f"/json/{i}") for i in range(5)]
    [job_id] = await enqueue_urls(arq_queue, urls, job_id_prefix="crashy")
    # As if the job had been started (and interrupted) 3 times already.
    await redis.set(f"arq:retry:{job_id}", 3)
    worker = make_worker(job_tries=3)
    await worker.async_run()
    assert worker.jobs_complete == 1
    assert await _kinds(pool, job_id) == {"abandoned": 5}
    assert upstream.hits == []
    await wait_until(lambda: _told(redis, job_id, 5))
    assert await _streamed(redis, job_id) == (5, {"abandoned": 5})


async def test_job_stuck_on_a_hung_database_is_deferred_not_failed(
    services,  # type: ignore[no-untyped-def]
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
) -> None:
    """A write that hangs (a lock, not a refusal) is cut before arq's timeout and retried later."""
    import asyncio

    from tests.helpers import wait_until

    urls = [upstream.url(f"/json/{i}") for i in range(5)]
    [job_id] = await enqueue_urls(arq_queue, urls, job_id_prefix="hung")
    admin = await asyncpg.connect(services.database_url)
    tx = admin.transaction()
    await tx.start()
    await admin.execute("LOCK TABLE documents IN ACCESS EXCLUSIVE MODE")
    worker = make_worker(job_retry_delay=0.5, **SHORT)
    run = asyncio.create_task(worker.async_run())
    try:

        async def deferred() -> bool:
            return worker.jobs_retried >= 1

        await wait_until(deferred, timeout=20)
    finally:
        await tx.rollback()
        await admin.close()
    await run
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await _kinds(pool, job_id) == {"document": 5}
