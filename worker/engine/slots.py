"""A semaphore that hands free slots to the most urgent waiter first (lowest priority value).

harvester gives each job's fetches the job's start order as priority. With a plain FIFO
semaphore, jobs started together progress together and finish together, so the process idles
in their common tail and in the poll before the next wave of jobs; oldest-job-first makes jobs
finish one after another while the younger ones keep every slot busy.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PrioritySemaphore:
    """Like `asyncio.Semaphore`, but ``acquire(priority)`` waiters are served lowest first.

    There is no context manager: the fetcher takes a slot with `try_acquire` (no coroutine, the
    usual case) or `acquire`, and gives it back in a ``finally`` right after.
    """

    def __init__(self, value: int) -> None:
        if value < 1:
            raise ValueError("value must be at least 1")
        self._value = value
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def free(self) -> int:
        return self._value

    def try_acquire(self) -> bool:
        """Take a slot now if one is free and nobody is waiting for one; never waits. A waiter
        is always served first, so a fast path never jumps the queue."""
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        return False

    async def acquire(self, priority: int = 0) -> None:
        if self.try_acquire():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The slot was handed to us as we were cancelled: pass it on.
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if not future.done():
                future.set_result(None)  # the slot goes straight to this waiter
                return
        self._value += 1
