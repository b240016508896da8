"""Polite fetching: per-host request pacing, in-flight limits, and host-wide pauses after a
server asks for one.

`HostLimiter` is what the fetcher asks before each request (each redirect hop and each page
too): `wait` before taking a process slot, so that waiting for a slow host holds no slot; for a
host with a fleet-wide limit it returns a `Ticket`, this process's place at the head of the
host's line, whose `take` (in the slot, just before the request) waits for the fleet's turn. A
`Turn` wraps a ticket as an async context around the request.
Two implementations: `HostPacer` here, one per process with the default rate only (a fetcher
built without a queue, and the engine's own tests), and the Redis-backed limiter in
`worker.queue.hostlimits`, which holds every worker that shares a Redis to one rate, one
in-flight limit and one pause per host. `HostPolicy` is a host's override of the default.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from yarl import URL

from worker.settings import MAX_HOST_RPS, MIN_HOST_RPS

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Given back when a request that holds an in-flight slot of its host has its answer.
Release = Callable[[], Awaitable[None]]

# Forget hosts whose reservations are in the past once the table holds this many.
PRUNE_AT = 10_000
MIN_RPS = MIN_HOST_RPS
MAX_RPS = MAX_HOST_RPS
MAX_CONCURRENCY = 100_000


class HostLines:
    """One lock per host, so that requests to a host wait their turn in line. A table of more
    than `PRUNE_AT` hosts forgets the lines nobody is in."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}

    def line(self, host: str) -> asyncio.Lock:
        lock = self._locks.get(host)
        if lock is None:
            if len(self._locks) > PRUNE_AT:
                self._locks = {h: lk for h, lk in self._locks.items() if lk.locked()}
            lock = self._locks[host] = asyncio.Lock()
        return lock


class Ticket(Protocol):
    """A request's place at the head of its host's line in this process."""

    async def take(self) -> Release | None:
        """Wait for the host's turn across the fleet and leave the line; a `Release` to await
        once the answer is read when the host has an in-flight limit, else None."""
        ...

    def drop(self) -> None:
        """Leave the line without a turn (the request will not be sent); idempotent."""
        ...


class HostLimiter(Protocol):
    """What the fetcher asks before a request to a host and tells after a server asked for a
    pause."""

    def free(self, host: str) -> bool:
        """Whether `wait` for ``host`` would return None at once (nothing paces, limits or
        pauses it now): the fetcher then skips the call, the coroutine it costs, once a hop."""
        ...

    async def wait(self, host: str, *, in_slot: bool = False) -> Ticket | None:
        """Return when a request to ``host`` may go for a slot: None when it may start at once,
        else the `Ticket` to take just before sending it. ``in_slot``: the caller holds a slot
        already (a redirect hop), so it must not queue behind requests waiting for one."""
        ...

    async def pause(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` back for ``seconds`` (capped), from now."""
        ...


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """A host's override: requests per second (0: not paced, None: the default,
    HARVESTER_HOST_RPS) and requests in flight at once across the fleet (None: no limit)."""

    rps: float | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.rps is not None and not valid_rps(self.rps):
            raise ValueError(
                f"rps must be 0 (not paced) or a number from {MIN_RPS:g} to {MAX_RPS:g}, "
                f"not {self.rps!r}"
            )
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(
                f"concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, "
                f"not {self.concurrency!r}"
            )

    def merged(self, newer: HostPolicy) -> HostPolicy:
        """This policy with the fields ``newer`` sets replaced."""
        return HostPolicy(
            self.rps if newer.rps is None else newer.rps,
            self.concurrency if newer.concurrency is None else newer.concurrency,
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {"rps": self.rps, "concurrency": self.concurrency}

    @classmethod
    def from_dict(cls, data: object) -> HostPolicy:
        """The policy stored as ``data``; ValueError (or TypeError) for anything `as_dict` does
        not write."""
        if not isinstance(data, dict):
            raise TypeError("a host policy is a JSON object")
        rps, concurrency = data.get("rps"), data.get("concurrency")
        if rps is not None and (isinstance(rps, bool) or not isinstance(rps, int | float)):
            raise TypeError("rps must be a number")
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int)
        ):
            raise TypeError("concurrency must be a whole number")
        return cls(None if rps is None else float(rps), concurrency)


def valid_rps(rps: float) -> bool:
    """Whether ``rps`` is a rate a host may have: 0 (not paced) or `MIN_RPS` to `MAX_RPS`."""
    return rps == 0 or (math.isfinite(rps) and MIN_RPS <= rps <= MAX_RPS)


def limiter_host(host: str | None) -> str:
    """A URL's host (yarl's ``url.host``: lower case, IDNA decoded, no brackets) as limiters
    know it: without one trailing dot, so ``example.com.`` is held to ``example.com``'s policy,
    rate and pauses."""
    if not host:
        return ""
    return host[:-1] if host.endswith(".") else host


def host_key(text: str) -> str:
    """``text`` as the fetcher names a host to its limiter (`limiter_host`), or ValueError
    saying why it is not a bare host name or IP address."""
    raw = text.strip()
    if not raw or raw != text or any(c in raw for c in "/?#@ \t"):
        raise ValueError(f"{text!r} is not a host name (give it bare: api.example.com)")
    try:
        url = URL(f"http://{raw}/")
        host, port = url.host, url.explicit_port
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{text!r} is not a host name: {exc}") from None
    key = limiter_host(host)
    if not key or port is not None:
        raise ValueError(f"{text!r} is not a host name (no scheme, port or path: api.example.com)")
    return key


def interval(rps: float) -> float:
    """Seconds between request starts at ``rps`` (0: not paced)."""
    return 1.0 / rps if rps > 0 else 0.0


class HostPacer:
    """Spaces request starts to one host ``1 / rps`` apart and holds a host back while it has
    asked us to (a 429 or 503 with ``Retry-After``), within one process: the `HostLimiter` of a
    fetcher without a queue.

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
        self._interval = interval(rps)
        self._pause_cap = pause_cap
        self._clock = clock
        self._sleep = sleep
        self._next: dict[str, float] = {}  # earliest start of the host's next request
        self._paused_until: dict[str, float] = {}
        self._lines = HostLines()

    def paused_for(self, host: str) -> float:
        """Seconds left of ``host``'s pause (0 when it is not paused)."""
        until = self._paused_until.get(host)
        return max(0.0, until - self._clock()) if until is not None else 0.0

    async def pause(self, host: str, seconds: float) -> None:
        """`HostLimiter.pause`: `hold`."""
        self.hold(host, seconds)

    def hold(self, host: str, seconds: float) -> None:
        """Hold every request to ``host`` back for ``seconds`` (capped), from now."""
        now = self._clock()
        if len(self._paused_until) > PRUNE_AT:
            self._paused_until = {h: t for h, t in self._paused_until.items() if t > now}
        until = now + min(max(seconds, 0.0), self._pause_cap)
        if until > self._paused_until.get(host, 0.0):
            self._paused_until[host] = until

    def free(self, host: str) -> bool:
        """`HostLimiter.free`: no pacing configured and no host has asked for a pause."""
        return not self._interval and not self._paused_until

    async def wait(self, host: str, *, in_slot: bool = False) -> None:
        """Return when a request to ``host`` may start (the line is held only while sleeping,
        never while waiting for a slot, so ``in_slot`` changes nothing here)."""
        if self.free(host):
            return  # the common case
        async with self._lines.line(host):
            while True:
                now = self._clock()
                start = max(now, self._next.get(host, 0.0), self._pause_end(host, now))
                if start <= now:
                    break
                # Look again after sleeping: a pause may have begun meanwhile.
                await self._sleep(start - now)
            if self._interval:
                if len(self._next) > PRUNE_AT:
                    self._next = {h: t for h, t in self._next.items() if t > now}
                self._next[host] = now + self._interval

    def _pause_end(self, host: str, now: float) -> float:
        until = self._paused_until.get(host)
        if until is None:
            return now
        if until <= now:
            del self._paused_until[host]
            return now
        return until


class Turn:
    """A request's turn from the `HostLimiter`, as an async context around the request:
    entering takes the ticket (waits for the fleet's turn), leaving gives back the host's
    in-flight slot if the turn holds one. `close` drops a ticket never taken; both are
    idempotent. Without a ticket (an unlimited host) it does nothing."""

    __slots__ = ("_release", "_ticket")

    def __init__(self, ticket: Ticket | None) -> None:
        self._ticket = ticket
        self._release: Release | None = None

    async def __aenter__(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            self._release = await ticket.take()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ticket is not None:
            self._ticket.drop()
            self._ticket = None
        release, self._release = self._release, None
        if release is not None:
            await release()


# The turn of a host with no limit: nothing to take or give back, so one serves every request.
NO_TURN: Final = Turn(None)


def turn_of(ticket: Ticket | None) -> Turn:
    """The `Turn` of a `HostLimiter.wait` answer."""
    return NO_TURN if ticket is None else Turn(ticket)
