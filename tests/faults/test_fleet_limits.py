"""Host policies hold across the fleet: real worker processes sharing one Valkey, real upstreams
recording when each request arrives."""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from tests.helpers import wait_until
from tests.helpers.faults import FAULT_QUEUE, Stack, WorkerProcess, enqueue, outcome_counts
from tests.helpers.upstream import Hit, Upstream
from worker.engine.pacing import HostPolicy
from worker.queue.hostlimits import set_policy

LIMITED = "127.0.0.2"  # a second loopback address: a host of its own for the fetcher


def busiest_second(hits: list[Hit]) -> int:
    """The most requests that arrived within any one second (a window starting at each hit)."""
    times = sorted(h.at for h in hits)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


async def _set(stack: Stack, host: str, policy: HostPolicy) -> None:
    client = aioredis.Redis.from_url(stack.redis_url)
    try:
        await set_policy(client, FAULT_QUEUE, host, policy)
    finally:
        await client.aclose()


async def _landed(stack: Stack, n: int, timeout: float) -> None:
    async def done() -> bool:
        return (await outcome_counts(stack.database_url))[0] >= n

    await wait_until(done, timeout=timeout)


async def test_three_workers_hold_a_host_to_its_rate_and_leave_others_alone(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Three worker processes, one host limited to 10 requests/s, 300 of its URLs: it never sees
    more than 10 (+1 for window alignment) in any second, and another host's 300 URLs, in jobs
    running at the same time, all land before the limited host has had its 100th request."""
    with Upstream(host=LIMITED).serving_in_thread() as limited:
        await _set(stack, LIMITED, HostPolicy(rps=10))
        urls = []
        for job in range(6):  # jobs of either host, enqueued in turn
            urls += [limited.url(f"/json/slow-{job}-{i}") for i in range(50)]
            urls += [upstream.url(f"/json/free-{job}-{i}") for i in range(50)]
        await enqueue(stack, urls, batch_size=50, prefix="fleet")
        workers = [spawn_worker(concurrency=16, per_host=16, max_jobs=4) for _ in range(3)]
        for w in workers:
            await w.start()
        await _landed(stack, 600, timeout=120)

    assert await outcome_counts(stack.database_url) == (600, 600, 0)
    slow = limited.hits_for("/json/slow-")
    free = upstream.hits_for("/json/free-")
    assert len(slow) == len(free) == 300
    busiest = busiest_second(slow)
    print(f"limited host: at most {busiest} requests in one second")  # the figure
    assert busiest <= 11, busiest
    hundredth = sorted(h.at for h in slow)[99]
    assert max(h.at for h in free) < hundredth


async def test_redis_down_holds_a_limited_host_back(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """While Redis is down, a limited host gets no request (the limiter waits, it never lets
    requests through unpaced), and once Redis is back its rate still holds."""
    await _set(stack, "127.0.0.1", HostPolicy(rps=5))
    await enqueue(stack, [upstream.url(f"/json/r-{i}") for i in range(60)], 60, "down")
    worker = spawn_worker(concurrency=16, per_host=16)
    await worker.start()

    async def started() -> bool:
        return len(upstream.hits_for("/json/r-")) >= 10

    await wait_until(started, timeout=30)
    await asyncio.to_thread(stack.redis.stop)
    stopped = time.monotonic()
    # The length of the injected outage.
    await asyncio.sleep(3)
    restarted = time.monotonic()
    await asyncio.to_thread(stack.redis.start)
    await _landed(stack, 60, timeout=60)

    hits = upstream.hits_for("/json/r-")
    # A request admitted just before the stop may still arrive in its first moments: its turn,
    # up to one spacing (0.2 s) ahead, then the way to the upstream on a busy machine.
    during = [h for h in hits if stopped + 1.0 < h.at < restarted]
    assert during == [], [h.at - stopped for h in during]
    assert busiest_second(hits) <= 6
    assert worker.running, worker.log()[-3000:]
