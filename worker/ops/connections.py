"""Connection limits for `harvester api`, which aiohttp.web does not have on its own.

aiohttp bounds a request's body size but neither how long a client may take to send its headers
nor how many connections it may hold, so a few dozen slow clients can take every file
descriptor. `ConnectionGuard` is the protocol factory the API listens with: it wraps each of
aiohttp's own protocols (one per connection), closes a connection at once when
HARVESTER_API_MAX_CONNECTIONS are already open, and gives every request's headers a deadline of
HARVESTER_API_HEADER_TIMEOUT. The deadline runs from the moment a connection opens or its
previous response was handed over, until the app receives the request (the API's middleware
calls `request_started` and `request_finished`); so it also closes kept-alive connections that
stay idle that long. The body has its own deadline, in the handler that reads it.

Only public aiohttp API is used: `web.Server` as a protocol factory, `request.protocol`, and
plain asyncio protocol callbacks forwarded unchanged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, cast

from prometheus_client import Counter

from worker.engine import counters as metrics

log = logging.getLogger("harvester.api")

DROPPED: Final = Counter(
    "harvester_api_connections_dropped",
    "API connections closed by harvester: over_limit (HARVESTER_API_MAX_CONNECTIONS) or "
    "header_timeout (HARVESTER_API_HEADER_TIMEOUT)",
    ["reason"],
    registry=metrics.REGISTRY,
)


class ConnectionGuard:
    """Caps the open connections of one listening server and times their request headers."""

    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        # aiohttp's protocol (what `request.protocol` is) -> our wrapper, for open connections.
        self._open: dict[asyncio.BaseProtocol, _Guarded] = {}
        self._full = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def protocol_factory(
        self, make_protocol: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """A factory for `loop.create_server` around aiohttp's (a `web.Server`)."""
        return lambda: _Guarded(self, make_protocol)

    def request_started(self, protocol: asyncio.BaseProtocol) -> None:
        """The app has a request's headers: stop its deadline."""
        guarded = self._open.get(protocol)
        if guarded is not None:
            guarded.disarm()

    def request_finished(self, protocol: asyncio.BaseProtocol) -> None:
        """The app is done with a request: the next one's headers have a deadline again."""
        guarded = self._open.get(protocol)
        if guarded is not None:
            guarded.arm()

    def has_room(self) -> bool:
        """Whether one more connection may open; counts and reports a refusal if not."""
        if len(self._open) < self.max_connections:
            return True
        DROPPED.labels(reason="over_limit").inc()
        if not self._full:  # once per episode, not once per connection
            self._full = True
            log.warning("api.connections_full", extra={"max": self.max_connections})
        return False

    def add(self, protocol: asyncio.BaseProtocol, guarded: _Guarded) -> None:
        self._open[protocol] = guarded

    def remove(self, protocol: asyncio.BaseProtocol) -> None:
        self._open.pop(protocol, None)
        if self._full and len(self._open) < self.max_connections:
            self._full = False
            log.info("api.connections_available", extra={"open": len(self._open)})


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol inside, every callback forwarded to it."""

    def __init__(self, guard: ConnectionGuard, make_protocol: Callable[[], asyncio.Protocol]):
        self._guard = guard
        self._make_protocol = make_protocol
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        transport = cast(asyncio.Transport, transport)
        if not self._guard.has_room():
            transport.abort()  # nothing read, nothing to flush: free the descriptor now
            return
        self._transport = transport
        self._inner = self._make_protocol()
        self._guard.add(self._inner, self)
        self.arm()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self._inner is not None:
            self._guard.remove(self._inner)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def arm(self) -> None:
        self.disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self._guard.header_timeout, self._expire)

    def disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._transport is None:
            return
        DROPPED.labels(reason="header_timeout").inc()
        log.debug("api.header_timeout", extra={"peer": self._transport.get_extra_info("peername")})
        # abort, not close: close would wait to flush to a client that may not be reading.
        self._transport.abort()
