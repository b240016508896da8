"""Crash safety: a worker killed again and again, as in Kafka Connect's bounce test; every job
has a notify_url, and its webhook reaches the receiver's deduplication exactly once."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable

import orjson
import pytest

from tests.helpers import wait_until
from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue, outcome_counts
from tests.helpers.upstream import Upstream

# Every worker signs and delivers webhooks (its other settings stay the test's).
WEBHOOKS = {"webhook_secret": "whsec-bounce-0123456789abcdef"}

# FAST without its short timeouts: the job timeout (so arq's lock, 130 s), the request and retry
# times and the shutdown grace are the defaults; concurrency and chunks stay small, so that kills
# still land mid-COPY. A SIGKILLed worker's jobs are taken over by the next worker's beats.
DEFAULT_TIMEOUTS = {
    k: v
    for k, v in FAST.items()
    if k not in ("job_timeout", "request_timeout", "retry_max_time", "shutdown_grace")
}


@pytest.mark.parametrize(
    ("settings", "bound"),
    [
        # Short locks: every job finished within a few lock expiries of the last restart.
        (FAST, 3 * (FAST["job_timeout"] + 10)),
        # Default timeouts: within seconds of it, not after a 130 s lock (issue 14's 20 s
        # takeover, plus the work left).
        (DEFAULT_TIMEOUTS, 45),
    ],
    ids=["short-locks", "default-timeouts"],
)
async def test_bounce_sigkill_and_sigterm_lose_and_duplicate_nothing(
    stack: Stack,
    upstream: Upstream,
    spawn_worker: Callable[..., WorkerProcess],
    settings: dict[str, int],
    bound: float,
) -> None:
    """1,200 URLs in 12 jobs; 3 SIGKILLs and 3 SIGTERMs mid-work; every URL lands exactly once,
    and soon after the last restart; each job's webhook is accepted once after deduplication."""
    async with Upstream().serving() as receiver:
        await _bounce(stack, upstream, receiver, spawn_worker, {**settings, **WEBHOOKS}, bound)


async def _bounce(
    stack: Stack,
    upstream: Upstream,
    receiver: Upstream,
    spawn_worker: Callable[..., WorkerProcess],
    settings: dict[str, object],
    bound: float,
) -> None:
    total = 1200
    urls = [upstream.url(f"/slow/{i}?delay=0.02") for i in range(total)]
    hook = {"notify_url": receiver.url("/echo/hook")}
    jobs = await enqueue(stack, urls, batch_size=100, prefix="bounce", shared=hook)
    rng = random.Random(20261125)
    rounds = [signal.SIGKILL] * 3 + [signal.SIGTERM] * 3
    rng.shuffle(rounds)

    for sig in rounds:
        before = (await outcome_counts(stack.database_url))[0]
        worker = spawn_worker(**settings)
        await worker.start()

        async def progressed(before: int = before) -> bool:
            return (await outcome_counts(stack.database_url))[0] >= min(total, before + 40)

        # Kill only once this worker is doing work (a SIGKILLed job's lock may delay that).
        await wait_until(progressed, timeout=40)
        # ...at a random point of it: fetching, writing, or between jobs. (This sleep chooses
        # when the fault is injected; no assertion depends on it.)
        await asyncio.sleep(rng.uniform(0, 0.4))
        worker.signal(sig)
        code = await worker.wait(timeout=30)
        assert code != 0 if sig == signal.SIGKILL else code == 0, worker.log()[-3000:]

    worker = spawn_worker(**settings)
    await worker.start()
    started = time.monotonic()

    async def all_landed() -> bool:
        return (await outcome_counts(stack.database_url))[0] == total

    await wait_until(all_landed, timeout=90)
    recovery = time.monotonic() - started
    outcomes, documents, dups = await outcome_counts(stack.database_url)
    assert (outcomes, documents, dups) == (total, total, 0)
    assert recovery < bound, recovery
    print(f"bounce: all landed {recovery:.1f} s after the last restart")  # for the report

    def accepted() -> dict[str, str]:
        """The receiver's deduplication: delivery id -> the job its body names."""
        hits = receiver.hits_for("/echo/hook")
        return {h.headers["Harvester-Delivery"]: orjson.loads(h.body)["job_id"] for h in hits}

    async def every_job_told() -> bool:
        return set(accepted().values()) == set(jobs)

    await wait_until(every_job_told, timeout=60)
    assert sorted(accepted().values()) == sorted(jobs)  # one delivery id per job, none twice
