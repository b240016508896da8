"""The byte budget: how many body bytes a worker process holds between fetching and landing.

One `ByteBudget` per process, shared by every job's `Lease`, bounds memory whatever the batch
size or the number of running jobs; `memory_bound` is the worst case the README's Sizing states.
"""

from __future__ import annotations

import asyncio

from worker.engine.bodies import PARSE_MAX_BYTES
from worker.settings import Settings

# Checking one body at a time of at most PARSE_MAX_BYTES: simdjson's parser keeps about 15
# bytes of buffers per byte of the largest body it has seen, and orjson, which judges a body
# simdjson refused, builds up to about 36 bytes of Python objects per byte it parses
# ([[],[],...] is the worst shape we measured).
PARSE_PEAK_BYTES = 56 * PARSE_MAX_BYTES
# What a connection's socket and parser buffers hold besides the body read so far.
CONNECTION_BUFFER_BYTES = 256 * 1024


def memory_bound(settings: Settings) -> int:
    """Bytes a worker process may hold at its peak over its idle baseline, whatever the number
    of jobs or the size of their batches: the README's Sizing formula.

    - ``concurrency`` bodies and connection buffers (`CONNECTION_BUFFER_BYTES`): each request
      slot holds at most one body, being read, checked, or waiting for the `ByteBudget`
      (`Fetcher.fetch` admits it before giving the slot back);
    - 3 x ``max(buffer_bytes, max_body_bytes)``: what the budget admits (queued, or in writers'
      chunks), and COPY's two encoded copies of it (the buffer it fills, the message it sends);
    - 3 bodies more: the one transient copy at a time (pieces joined, strings blanked for the
      exponent check) and freed large blocks the allocator has not yet given back;
    - `PARSE_PEAK_BYTES` for the one parse at a time of a body up to `PARSE_MAX_BYTES`.
    """
    body = settings.max_body_bytes
    slots = settings.concurrency * (body + CONNECTION_BUFFER_BYTES)
    held = slots + 3 * body + 3 * max(settings.buffer_bytes, body)
    return held + PARSE_PEAK_BYTES


class ByteBudget:
    """Bounds the body bytes held between fetchers and the database, whatever the batch size.

    One per worker process, shared by its jobs (see `worker.runtime.app.startup`), so memory is
    flat in batch size and in the number of running jobs. A fetcher takes its body's size before
    queueing it and a writer gives it back once the chunk has landed. When nothing is held, one
    body is always let through, so a body larger than the budget cannot stall.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def take(self, n: int) -> None:
        if self.used + n <= self.limit:
            self.used += n  # the usual case, without touching the event
            return
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        if not self._freed.is_set():
            self._freed.set()


class Lease:
    """One run's share of the process's `ByteBudget`, returned whole when the run ends however
    it ends (a cancelled job must not keep bytes the other jobs are waiting for)."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    async def take(self, n: int) -> None:
        await self._budget.take(n)
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n
        self._budget.give(n)

    def release(self) -> None:
        if self.held:
            self._budget.give(self.held)
            self.held = 0
