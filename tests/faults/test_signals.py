"""SIGTERM is graceful within a grace period; after SIGKILL the restarted worker takes the job
over within seconds, not when arq's lock expires."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from tests.helpers import wait_until
from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue, outcome_counts
from tests.helpers.upstream import Upstream


async def test_sigterm_lets_a_running_job_finish_and_takes_no_new_one(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Within the grace period the running batch completes; the queued one stays queued."""
    await enqueue(stack, [upstream.url(f"/slow/a{i}?delay=1") for i in range(4)], 4, "term-a")
    await enqueue(stack, [upstream.url(f"/json/b{i}") for i in range(4)], 4, "term-b")
    worker = spawn_worker(**{**FAST, "max_jobs": 1, "shutdown_grace": 8})
    await worker.start()

    async def four_in_flight() -> bool:
        return upstream.in_flight == 4

    await wait_until(four_in_flight, timeout=20)
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=20) == 0
    assert time.monotonic() - signalled < 8
    assert "job.done" in worker.log()
    outcomes, documents, dups = await outcome_counts(stack.database_url)
    assert (outcomes, documents, dups) == (4, 4, 0)
    assert upstream.hits_for("/json/b") == []


async def test_sigterm_past_the_grace_period_cancels_and_the_job_reruns_at_once(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A batch still running when the grace period ends is cancelled and re-queued, not locked."""
    await enqueue(stack, [upstream.url("/json/done"), upstream.url("/gate/held")], 10, "cancel")
    worker = spawn_worker(**{**FAST, "shutdown_grace": 1})
    await worker.start()

    async def held() -> bool:
        return len(upstream.hits_for("/gate/held")) == 1

    await wait_until(held, timeout=20)
    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=20) == 0

    restarted = time.monotonic()
    again = spawn_worker(**FAST)
    await again.start()

    async def refetched() -> bool:
        return len(upstream.hits_for("/gate/held")) == 2

    await wait_until(refetched, timeout=20)
    rerun_after = time.monotonic() - restarted
    upstream.gate.set()

    async def landed() -> bool:
        return (await outcome_counts(stack.database_url))[0] == 2

    await wait_until(landed, timeout=20)
    assert (await outcome_counts(stack.database_url)) == (2, 2, 0)
    # Re-run as soon as the new worker polls, not after the in-progress lock (16 s) expires.
    assert rerun_after < FAST["job_timeout"] + 10 - 5, rerun_after


async def test_after_sigkill_the_restarted_worker_takes_the_job_over_in_seconds(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Default settings: SIGKILL leaves arq's in-progress lock (130 s), but the worker the
    process manager starts in its place takes the job over once the dead one's heartbeat is
    gone, and re-runs it within 20 s of the kill."""
    await enqueue(stack, [upstream.url("/json/first"), upstream.url("/gate/k")], 10, "kill")
    worker = spawn_worker()
    await worker.start()

    async def held() -> bool:
        return len(upstream.hits_for("/gate/k")) == 1

    await wait_until(held, timeout=20)
    killed = time.monotonic()
    worker.signal(signal.SIGKILL)
    await worker.wait()
    again = spawn_worker()
    await again.start()

    async def refetched() -> bool:
        return len(upstream.hits_for("/gate/k")) == 2

    await wait_until(refetched, timeout=60)
    rerun_after = time.monotonic() - killed
    upstream.gate.set()

    async def landed() -> bool:
        return (await outcome_counts(stack.database_url))[0] == 2

    await wait_until(landed, timeout=20)
    assert (await outcome_counts(stack.database_url)) == (2, 2, 0)
    assert rerun_after < 20, rerun_after
    assert "job.taken_over" in again.log()
