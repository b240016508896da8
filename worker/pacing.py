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

    ``wait(host)`` reserves the host's next start time and sleeps until it; with no rate set and
    no pause in force it returns at once without touching the clock. A pause is capped at
    ``pause_cap`` seconds, so a hostile ``Retry-After`` cannot park a host for days.
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
        self._next: dict[str, float] = {}
        self._paused_until: dict[str, float] = {}

    def paused_for(self, host: str) -> float:
        """Seconds left of ``host``'s pause (0 when it is not paused)."""
        until = self._paused_until.get(host)
        return max(0.0, until - self._clock()) if until is not None else 0.0

    def pause(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` back for ``seconds`` (capped), from now."""
        until = self._clock() + min(max(seconds, 0.0), self._pause_cap)
        if until > self._paused_until.get(host, 0.0):
            self._paused_until[host] = until

    async def wait(self, host: str) -> None:
        """Return when a request to ``host`` may start."""
        if not self._interval and not self._paused_until:
            return  # the common case: no pacing configured and no host has asked for a pause
        now = self._clock()
        start = now
        if self._interval:
            start = max(now, self._next.get(host, 0.0))
            self._next[host] = start + self._interval
            if len(self._next) > _PRUNE_AT:
                self._prune(now)
        while True:
            start = max(start, self._pause_end(host, now))
            if start <= now:
                return
            await self._sleep(start - now)
            # A pause may have begun while we slept: look again before going.
            now = self._clock()

    def _pause_end(self, host: str, now: float) -> float:
        until = self._paused_until.get(host)
        if until is None:
            return now
        if until <= now:
            del self._paused_until[host]
            return now
        return until

    def _prune(self, now: float) -> None:
        self._next = {h: t for h, t in self._next.items() if t > now}
