"""Redis restarts while jobs are queued and running; an outage longer than the budget."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue, outcome_counts, reach
from tests.helpers.upstream import Upstream


async def test_worker_rides_out_redis_restarts_of_1_and_15_seconds(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Jobs queued and running across two Redis restarts all complete; the worker stays up."""
    total = 300
    await enqueue(stack, [upstream.url(f"/slow/{i}?delay=0.1") for i in range(total)], 50, "redis")
    worker = spawn_worker(**FAST)
    await worker.start()

    await reach(stack, 40, timeout=30)
    await stack.restart_redis(down_for=1)
    progress = (await outcome_counts(stack.database_url))[0]
    await reach(stack, progress + 40, timeout=30)
    await stack.restart_redis(down_for=15)
    await reach(stack, total, timeout=90)

    assert worker.running, worker.log()[-3000:]
    assert (await outcome_counts(stack.database_url)) == (total, total, 0)


async def test_outage_longer_than_the_budget_exits_non_zero_and_loses_nothing(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Past HARVESTER_REDIS_RETRY_TIME the worker exits with a clear message; a restart finishes."""
    total = 200
    await enqueue(stack, [upstream.url(f"/slow/{i}?delay=0.1") for i in range(total)], 50, "outage")
    worker = spawn_worker(**FAST, redis_retry_time=3)
    await worker.start()
    await reach(stack, 20, timeout=30)

    await asyncio.to_thread(stack.redis.stop)
    code = await worker.wait(timeout=60)
    assert code == 3, worker.log()[-3000:]
    assert "Redis is unavailable" in worker.log()
    await asyncio.to_thread(stack.redis.start)

    again = spawn_worker(**FAST)
    await again.start()
    await reach(stack, total, timeout=90)
    assert (await outcome_counts(stack.database_url)) == (total, total, 0)
