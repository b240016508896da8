"""The priority semaphore that bounds in-flight fetches per process."""

from __future__ import annotations

import asyncio

import pytest

from worker.engine.slots import PrioritySemaphore


async def test_bounds_holders_like_a_semaphore() -> None:
    """No more than `value` holders at once; everyone gets through."""
    sem = PrioritySemaphore(3)
    holding = peak = 0
    gate = asyncio.Event()

    async def worker() -> None:
        nonlocal holding, peak
        await sem.acquire()
        try:
            holding += 1
            peak = max(peak, holding)
            await gate.wait()
            holding -= 1
        finally:
            sem.release()

    tasks = [asyncio.create_task(worker()) for _ in range(10)]
    await asyncio.sleep(0)
    assert (holding, sem.free) == (3, 0)
    gate.set()
    await asyncio.gather(*tasks)
    assert peak == 3
    assert sem.free == 3


async def test_lowest_priority_value_is_served_first() -> None:
    """Freed slots go to waiters in priority order, FIFO within a priority."""
    sem = PrioritySemaphore(1)
    await sem.acquire()
    order: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await sem.acquire(priority)
        order.append(name)
        sem.release()

    tasks = [
        asyncio.create_task(waiter(n, p))
        for n, p in [("young-1", 5), ("old-1", 1), ("young-2", 5), ("old-2", 1)]
    ]
    await asyncio.sleep(0)
    sem.release()
    await asyncio.gather(*tasks)
    assert order == ["old-1", "old-2", "young-1", "young-2"]


async def test_cancelled_waiters_do_not_leak_slots() -> None:
    """A waiter cancelled while queued, or just as it was handed a slot, gives nothing away."""
    sem = PrioritySemaphore(1)
    await sem.acquire()
    queued = asyncio.create_task(sem.acquire(1))
    handed = asyncio.create_task(sem.acquire(0))
    await asyncio.sleep(0)
    queued.cancel()
    sem.release()  # handed to `handed`...
    handed.cancel()  # ...which is cancelled before it runs: the slot must come back
    for t in (queued, handed):
        with pytest.raises(asyncio.CancelledError):
            await t
    assert sem.free == 1
    await asyncio.wait_for(sem.acquire(), 1)


async def test_try_acquire_takes_only_a_free_slot_nobody_waits_for() -> None:
    """try_acquire takes a free slot at once; it fails while none is free, and a slot given
    back while someone waits goes to the waiter, not to a try_acquire that comes first."""
    sem = PrioritySemaphore(2)
    assert sem.try_acquire()
    assert sem.try_acquire()
    assert not sem.try_acquire()
    waiter = asyncio.create_task(sem.acquire(5))
    await asyncio.sleep(0)  # queued
    sem.release()  # handed to the waiter, which has not run yet
    assert not sem.try_acquire()
    await asyncio.wait_for(waiter, 1)
    assert sem.free == 0
    sem.release()
    sem.release()
    assert sem.free == 2
