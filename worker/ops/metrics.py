"""Serving metrics: the Prometheus text of the process's registry, and the worker's small HTTP
server for it (``HARVESTER_METRICS_PORT``); ``harvester api`` serves its own on ``/metrics``.

Several worker processes on one host share one endpoint. Each records its metrics in a directory
of the host (prometheus_client's multiprocess mode, ``HARVESTER_METRICS_DIR``); the process that
binds the port serves the sum over all of them, and the others keep trying the port, so one of
them takes over when the serving process stops. A single process with no directory serves its
own registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from pathlib import Path
from typing import Final

from aiohttp import web
from arq.connections import ArqRedis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    multiprocess,
    values,
)

from worker.engine.counters import QUEUE_DEPTH, REGISTRY
from worker.errors import ListenError

log = logging.getLogger("harvester.metrics")

# How often a process that found the port taken tries it again.
RETRY_BIND_S: Final = 5.0


def multiprocess_active() -> bool:
    """Whether this process records its metrics in a shared directory (prometheus_client
    decides when it is first imported; ``harvester worker`` sets it up before that)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


async def exposition(redis: ArqRedis | None, queue: str, shared: Path | None = None) -> bytes:
    """The metrics in Prometheus text format, the queue depth read just now: this process's
    registry, or with ``shared`` the sum over every process recording there."""
    if redis is not None:
        QUEUE_DEPTH.set(await redis.zcard(queue))
    if shared is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(shared))  # type: ignore[no-untyped-call]
    return generate_latest(registry)


def metrics_app(redis: ArqRedis | None, queue: str, shared: Path | None = None) -> web.Application:
    """An aiohttp app serving ``GET /metrics``."""

    async def handler(request: web.Request) -> web.Response:
        body = await exposition(redis, queue, shared)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port``; clean it up with ``await runner.cleanup()``. A port in
    use is a `ListenError` naming it."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} is in use (HARVESTER_METRICS_PORT)") from exc
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return runner


class SharedMetricsServer:
    """The worker's metrics endpoint: served by whichever process of the host holds the port."""

    def __init__(self, app: web.Application, host: str, port: int, shared: Path) -> None:
        self._app, self._host, self._port, self._shared = app, host, port, shared
        self._runner: web.AppRunner | None = None
        self._waiting: asyncio.Task[None] | None = None

    @property
    def serving(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Serve on the port, or, if another process of the host does, keep trying it."""
        if await self._try():
            return
        log.info("metrics.shared", extra={"port": self._port, "dir": str(self._shared)})
        self._waiting = asyncio.create_task(self._take_over())

    async def _try(self) -> bool:
        try:
            self._runner = await serve(self._app, self._host, self._port)
        except ListenError as exc:
            if not isinstance(exc.__cause__, OSError) or exc.__cause__.errno != errno.EADDRINUSE:
                raise
            return False
        log.info("metrics.serving", extra={"port": self._port})
        return True

    async def _take_over(self) -> None:
        # Polling is the point: the port frees when another process exits, which no event here
        # can tell us.
        while not await self._try():  # noqa: ASYNC110
            await asyncio.sleep(RETRY_BIND_S)

    async def stop(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiting
        if self._runner is not None:
            await self._runner.cleanup()
        # This process's live gauges leave the sum; its counters stay (totals never go back).
        multiprocess.mark_process_dead(os.getpid(), str(self._shared))  # type: ignore[no-untyped-call]
