"""`harvester api`: an HTTP intake for services that cannot talk to Redis (aiohttp.web).

    POST /batches          {"urls": [...], "source"?: str, "job_id"?: str} -> 202 {"job_id", ...}
    GET  /batches/{job_id} status, what has landed so far, and the summary once done
    GET  /healthz          200 when Redis and Postgres answer, else 503
    GET  /metrics          Prometheus text (this process, plus the queue depth)
    GET  /openapi.json     the OpenAPI 3.1 document of the above
    GET  /                 the dashboard, and the JSON endpoints it polls (`worker.ops.dashboard`)

Everything but health, metrics, this document, the login and the dashboard's static files needs
``Authorization: Bearer $HARVESTER_API_TOKEN``, or a dashboard session's cookie (and, to POST,
its CSRF token: `worker.ops.sessions`). Every answer carries a strict Content-Security-Policy,
and is compressed when the client accepts it (but the one that carries a CSRF token). Without a
token the API refuses to start unless bound to loopback, and then serves only requests whose Host
(and a POST's Origin) name loopback, against DNS rebinding. Payloads are validated by the same
code as the job (`worker.queue.payload`), so the API refuses what the worker would. Every failure
is a JSON answer (an outage of Redis or Postgres a 503), and every request is counted.

The job routes are `worker.ops.batches`; what every request passes through (who may call,
headers, compression, failures as JSON, the count) is `worker.ops.middleware`. `serve` listens
through `worker.ops.connections.ConnectionGuard` (deadlines on headers, a cap on connections);
`run` is `harvester api`: serve until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from worker.engine import store
from worker.engine.credentials import profile_names
from worker.engine.migrate import migrate
from worker.errors import ConfigError, ListenError
from worker.ops import dashboard
from worker.ops import metrics as ops_metrics
from worker.ops.answers import json_answer
from worker.ops.appkeys import CONNECTIONS, POOL, PROFILES, REDIS, SETTINGS
from worker.ops.batches import get_batch, post_batch
from worker.ops.connections import ConnectionGuard
from worker.ops.middleware import api_middleware, is_loopback
from worker.ops.openapi import openapi
from worker.queue.connection import redis_pool
from worker.settings import Settings

log = logging.getLogger("harvester.api")

# How long a request retries Redis before answering 503 (a worker rides out much longer).
API_REDIS_RETRY_S: Final = 1.0
HEALTH_TIMEOUT_S: Final = 2.0


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to serve without a token anywhere but on loopback."""
    if settings.api_token is None and not is_loopback(host):
        raise ConfigError(
            f"HARVESTER_API_TOKEN is required to bind the API to {host!r}; "
            "without a token it only listens on loopback"
        )


async def healthz(request: web.Request) -> web.Response:
    """200 when Redis and Postgres answer within HEALTH_TIMEOUT_S, else 503."""
    checks: dict[str, str] = {}
    probes = {
        "redis": request.app[REDIS].ping(),
        "postgres": request.app[POOL].fetchval("SELECT 1"),
    }
    for name, probe in probes.items():
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await probe
            checks[name] = "ok"
        except (RedisError, *store.DB_ERRORS) as exc:
            checks[name] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return json_answer(
        {"status": "ok" if healthy else "unavailable", **checks}, 200 if healthy else 503
    )


async def get_metrics(request: web.Request) -> web.Response:
    body = await ops_metrics.exposition(request.app[REDIS], request.app[SETTINGS].queue)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def get_openapi(request: web.Request) -> web.Response:
    return json_answer(openapi(request.app[SETTINGS]))


def create_app(settings: Settings) -> web.Application:
    """The API application; its Redis client and Postgres pool live as long as it does."""
    app = web.Application(middlewares=[api_middleware], client_max_size=settings.api_max_body_bytes)
    app[SETTINGS] = settings
    if settings.credentials is not None:
        app[PROFILES] = profile_names(settings.credentials)
    app[CONNECTIONS] = ConnectionGuard(
        max_connections=settings.api_max_connections, header_timeout=settings.api_header_timeout
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await migrate(settings.database_url)
        async with store.open_pool(settings) as pool:
            app[POOL] = pool
            # A request answers at once that Redis is down (503) rather than ride out the
            # outage the way a worker does: its caller retries, and holds no connection meanwhile.
            app[REDIS] = redis_pool(
                settings.model_copy(update={"redis_retry_time": API_REDIS_RETRY_S})
            )
            try:
                yield
            finally:
                await app[REDIS].aclose()

    app.cleanup_ctx.append(resources)
    r = app.router
    r.add_post("/batches", post_batch)
    r.add_get("/batches/{job_id}", get_batch)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", get_metrics)
    r.add_get("/openapi.json", get_openapi)
    dashboard.add_routes(app)
    return app


@asynccontextmanager
async def serve(app: web.Application, host: str, port: int) -> AsyncIterator[int]:
    """Serve ``app`` (from `create_app`) on host:port until the block exits; yield the bound
    port. Logs ``api.started`` once the socket listens; raises `ListenError` if it cannot."""
    settings = app[SETTINGS]
    check_exposure(settings, host)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # opens the Redis client and the Postgres pool
    server: asyncio.Server | None = None
    try:
        assert runner.server is not None
        factory = app[CONNECTIONS].protocol_factory(runner.server)
        server = await _listen(factory, host, port)
        bound = int(server.sockets[0].getsockname()[1])
        log.info(
            "api.started",
            extra={"host": host, "port": bound, "auth": settings.api_token is not None},
        )
        yield bound
    finally:
        if server is not None:
            server.close()  # no new connections
        await runner.cleanup()  # finishes requests in flight, then closes Redis and Postgres
        if server is not None:
            await server.wait_closed()


async def _listen(factory: Callable[[], asyncio.Protocol], host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(factory, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} is in use (--port or HARVESTER_API_PORT)") from exc
        raise ListenError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} "
            "(HARVESTER_API_HOST, HARVESTER_API_PORT)"
        ) from exc


def run(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then finish requests in flight and exit."""
    asyncio.run(_serve_until_stopped(settings, host, port))


async def _serve_until_stopped(settings: Settings, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with serve(create_app(settings), host, port):
            await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("api.stopped")
