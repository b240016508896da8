"""Polite fetching: per-host request pacing and host-wide pauses after a server asks for one.

One `HostPacer` per worker process, shared by the fetches of every job, so a limit on a host
holds however many jobs target it at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Forget hosts whose reservations are in the past once the table holds this many.
_PRUNE_AT = 10_000


class HostPacer:
    """Spaces request starts to one host ``1 / rps`` apart and holds a host back while it has
    asked us to (a 429 or 503 with ``Retry-After``).

    Requests to one host wait in line on a lock, and only the one at the head sleeps, so a
    waiter that is cancelled (its job hit a deadline) books nothing for later ones. With no rate
    set and no pause in force, ``wait`` returns at once without touching the clock. A pause is
    capped at ``pause_cap`` seconds, so a hostile ``Retry-After`` cannot park a host for days.
    """

    def __init__(
        self,
        rps: float = 0.0,
        *,
        pause_cap: float = 60.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rps < 0:
            raise ValueError("rps must not be negative")
        self._interval = 1.0 / rps if rps else 0.0
        self._pause_cap = pause_cap
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, float] = {}  # earliest start of the host's next request
        self._paused_until: dict[str, float] = {}
        self._lines: dict[str, asyncio.Lock] = {}

    def paused_for(self, host: str) -> float:
        """Seconds left of ``host``'s pause (0 when it is not paused)."""
        until = self._paused_until.get(host)
        return max(0.0, until - self._clock()) if until is not None else 0.0

    def pause(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` back for ``seconds`` (capped), from now."""
        now = self._clock()
        if len(self._paused_until) > _PRUNE_AT:
            self._paused_until = {h: t for h, t in self._paused_until.items() if t > now}
        until = now + min(max(seconds, 0.0), self._pause_cap)
        if until > self._paused_until.get(host, 0.0):
            self._paused_until[host] = until

    async def wait(self, host: str) -> None:
        """Return when a request to ``host`` may start."""
        if not self._interval and not self._paused_until:
            return  # the common case: no pacing configured and no host has asked for a pause
        line = self._lines.get(host)
        if line is None:
            if len(self._lines) > _PRUNE_AT:
                self._prune()
            line = self._lines[host] = asyncio.Lock()
        async with line:
            while True:
                now = self._clock()
                start = max(now, self._next.get(host, 0.0), self._pause_end(host, now))
                if start <= now:
                    break
                # Look again after sleeping: a pause may have begun meanwhile.
                await self._sleep(start - now)
            if self._interval:
                self._next[host] = now + self._interval

    def _pause_end(self, host: str, now: float) -> float:
        until = self._paused_until.get(host)
        if until is None:
            return now
        if until <= now:
            del self._paused_until[host]
            return now
        return until

    def _prune(self) -> None:
        now = self._clock()
        self._next = {h: t for h, t in self._next.items() if t > now}
        self._lines = {h: lock for h, lock in self._lines.items() if lock.locked()}
