"""Serving metrics: the Prometheus text of the process's registry, and the worker's small
HTTP server for it (``HARVESTER_METRICS_PORT``); ``harvester api`` serves the same on
``/metrics``."""

from __future__ import annotations

from aiohttp import web
from arq.connections import ArqRedis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.engine.counters import QUEUE_DEPTH, REGISTRY


async def exposition(redis: ArqRedis | None, queue: str) -> bytes:
    """The registry in Prometheus text format, the queue depth read just now."""
    if redis is not None:
        QUEUE_DEPTH.set(await redis.zcard(queue))
    return generate_latest(REGISTRY)


def metrics_app(redis: ArqRedis | None, queue: str) -> web.Application:
    """An aiohttp app serving ``GET /metrics``."""

    async def handler(request: web.Request) -> web.Response:
        body = await exposition(redis, queue)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port``; clean it up with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
