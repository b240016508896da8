"""A run that loses its job's lease, in a real worker: it lands nothing more, and unless another
worker took the job over in Redis, the job is tried again rather than closed on its word."""

from __future__ import annotations

import asyncpg
from arq.connections import ArqRedis
from arq.jobs import Job

from tests.helpers import wait_until
from tests.helpers.upstream import Upstream
from tests.helpers.workers import long_running, running
from worker.engine import leases
from worker.queue.client import enqueue_urls
from worker.queue.serialization import deserialize
from worker.settings import Settings


async def test_a_run_that_lost_its_lease_to_an_unseen_run_retries_the_job(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings, upstream: Upstream
) -> None:
    """The lease goes to a run no hold records (a worker that records none) while the job waits
    at the gate: the run's next write is refused, the job is retried (not closed with a URL
    left), and the retry takes the lease back and lands the rest, each URL once."""
    [job_id] = await enqueue_urls(
        arq_queue, [upstream.url("/json/l0"), upstream.url("/gate/l1")], job_id_prefix="lost"
    )
    worker = long_running(settings)
    async with running(worker):

        async def first_landed() -> bool:
            landed = await pool.fetchval("SELECT count(*) FROM documents") == 1
            return landed and upstream.in_flight == 1

        await wait_until(first_landed, timeout=20)
        await leases.take(pool, job_id, "elsewhere:1")
        upstream.gate.set()

        async def all_landed() -> bool:
            return await pool.fetchval("SELECT count(*) FROM documents") == 2

        await wait_until(all_landed, timeout=30)
        job = Job(job_id, arq_queue, _queue_name=settings.queue, _deserializer=deserialize)

        async def finished() -> bool:  # the result follows the last rows by a moment
            return await job.result_info() is not None

        await wait_until(finished, timeout=30)
        info = await job.result_info()
    assert info is not None
    assert info.success
    assert info.job_try == 2
    assert len(upstream.hits_for("/gate/l1")) == 2
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 0
    assert await pool.fetchval("SELECT epoch FROM job_leases WHERE job_id = $1", job_id) is None
