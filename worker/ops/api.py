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

`serve` listens through `worker.ops.connections.ConnectionGuard` (deadlines on headers, a cap
on connections); `run` is `harvester api`: serve until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web
from arq.jobs import Job, JobStatus
from prometheus_client import CONTENT_TYPE_LATEST, Counter
from redis.exceptions import RedisError

from worker.engine import counters as metrics
from worker.engine import store
from worker.engine.credentials import profile_names
from worker.engine.migrate import migrate
from worker.errors import BadJobError, ConfigError, ListenError, StoreError
from worker.ops import dashboard, sessions
from worker.ops import metrics as ops_metrics
from worker.ops.answers import error_answer, json_answer, same_secret
from worker.ops.appkeys import POOL, REDIS, SETTINGS
from worker.ops.connections import ConnectionGuard
from worker.ops.openapi import openapi
from worker.queue.checks import MAX_JOB_ID_LENGTH, has_control, job_id_problems
from worker.queue.client import JobIdTakenError, enqueue_batch, redis_pool
from worker.queue.payload import parse_batch
from worker.queue.serialization import deserialize
from worker.settings import Settings

log = logging.getLogger("harvester.api")

CONNECTIONS: Final = web.AppKey("connections", ConnectionGuard)
# The credential profile names, when HARVESTER_CREDENTIALS is set here: a job naming another
# is refused at the door. Without the file, the worker alone can judge its `auth`.
PROFILES: Final = web.AppKey("profiles", frozenset)
# How long a request retries Redis before answering 503 (a worker rides out much longer).
API_REDIS_RETRY_S: Final = 1.0

REQUESTS: Final = Counter(
    "harvester_api_requests",
    "API requests by route and status",
    ["route", "status"],
    registry=metrics.REGISTRY,
)

HEALTH_TIMEOUT_S: Final = 2.0
_OPEN_PATHS: Final = frozenset({"/healthz", "/metrics", "/openapi.json"})
_SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# No inline script or style anywhere: the dashboard's code and styles are files of its own.
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Worth compressing; /session is left out: a secret next to reflected input (BREACH).
_COMPRESSIBLE: Final = frozenset(
    {"application/json", "text/html", "text/javascript", "text/css", "image/svg+xml"}
)
_UNCOMPRESSED_PATHS: Final = frozenset({"/session"})
MIN_COMPRESS_BYTES: Final = 512
_LANDED = """
SELECT (SELECT count(*) FROM documents WHERE job_id = $1) AS documents,
       (SELECT count(*) FROM fetch_failures WHERE job_id = $1) AS failures
"""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings, host: str) -> None:
    """Refuse to serve without a token anywhere but on loopback."""
    if settings.api_token is None and not is_loopback(host):
        raise ConfigError(
            f"HARVESTER_API_TOKEN is required to bind the API to {host!r}; "
            "without a token it only listens on loopback"
        )


@web.middleware
async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by route and status, whatever became of it, and tell the
    connection guard when the app has a request (no header deadline while it handles it)."""
    connections = request.app[CONNECTIONS]
    connections.request_started(request.protocol)
    status = "499"  # nginx's "client closed request": only a cancelled handler keeps it
    try:
        response = await _answer(request, handler)
        status = str(response.status)
        _finish(request, response)
        return response
    finally:
        connections.request_finished(request.protocol)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        REQUESTS.labels(route=route, status=status).inc()


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the bearer token, run the handler, and turn every way it can fail into a JSON
    answer: aiohttp's HTTP errors as they are, Redis or Postgres down as 503, a bug as 500."""
    settings = request.app[SETTINGS]
    refusal = _refusal(request, settings)
    if refusal is not None:
        return refusal
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_answer(
            413,
            f"request body over {settings.api_max_body_bytes} bytes (HARVESTER_API_MAX_BODY_BYTES)",
        )
    except web.HTTPException as exc:
        return error_answer(exc.status, exc.reason)
    except RedisError as exc:
        return _unavailable("Redis", exc)
    except StoreError as exc:
        return _unavailable("Postgres", exc)
    except Exception:
        log.exception("api.error", extra={"method": request.method, "path": request.path})
        return error_answer(500, "internal error")


def _finish(request: web.Request, response: web.StreamResponse) -> None:
    """Security headers on every answer; compression for a JSON or static one worth it."""
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if (
        isinstance(response, web.Response)
        and response.content_type in _COMPRESSIBLE
        and request.path not in _UNCOMPRESSED_PATHS
        and response.body is not None
        and len(response.body) >= MIN_COMPRESS_BYTES  # type: ignore[arg-type]
    ):
        response.enable_compression()
        # A cache between may keep one form of the answer: it must key it by encoding.
        response.headers["Vary"] = "Accept-Encoding"


def _refusal(request: web.Request, settings: Settings) -> web.Response | None:
    """The answer to a request that may not proceed, or None."""
    if settings.api_token is None:
        return _foreign_site(request)
    if request.path in _OPEN_PATHS or dashboard.is_public(request.path):
        return None
    expected = f"Bearer {settings.api_token.get_secret_value()}"
    if same_secret(request.headers.get("Authorization", ""), expected):
        return None
    session = sessions.session_of(request, request.app[dashboard.SESSIONS])
    if session is not None:
        if request.method in _SAFE_METHODS or sessions.csrf_ok(request, session):
            return None
        return error_answer(403, f"missing or wrong CSRF token ({sessions.CSRF_HEADER} header)")
    response = error_answer(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _foreign_site(request: web.Request) -> web.Response | None:
    """Without a token, loopback is the only protection, and a web page can get around it by
    DNS rebinding (its own name, re-pointed at 127.0.0.1): the browser then sends that name as
    Host, and its origin as Origin. Refuse both unless they name loopback."""
    if request.path == "/healthz":
        return None
    if not _is_loopback_host(request.headers.get("Host", "")):
        return error_answer(
            403,
            "without HARVESTER_API_TOKEN the Host header must name loopback "
            "(localhost, 127.0.0.1 or [::1])",
        )
    origin = request.headers.get("Origin")
    if request.method in _SAFE_METHODS or origin is None or _is_loopback_origin(origin):
        return None
    return error_answer(
        403,
        "without HARVESTER_API_TOKEN a browser's Origin must be loopback "
        "(http://localhost, http://127.0.0.1 or http://[::1])",
    )


def _is_loopback_host(host: str) -> bool:
    """A Host header naming loopback: ``localhost``, ``127.0.0.1``, ``[::1]``, with or
    without a port."""
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return False
        port = rest[1:]
    else:
        name, _, port = host.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return False
    return is_loopback(name.lower())


def _is_loopback_origin(origin: str) -> bool:
    try:
        url = urlsplit(origin)
        return url.scheme in ("http", "https") and is_loopback(url.hostname or "")
    except ValueError:
        return False


def _unavailable(backend: str, exc: Exception) -> web.Response:
    """A 503 for an outage: one log line (no traceback, it is not a bug) and a short answer."""
    log.warning(
        "api.backend_unavailable",
        extra={"backend": backend, "error": f"{type(exc).__name__}: {exc}"},
    )
    return error_answer(503, f"{backend} is unavailable; try again later")


def _job_id_problem(job_id: object) -> str | None:
    """What is wrong with a client's ``job_id`` (None: nothing, or none given)."""
    if job_id is None:
        return None
    if not isinstance(job_id, str) or not job_id.strip():
        return "'job_id' must be a non-empty string"
    problems = job_id_problems(job_id)
    return f"'job_id': {'; '.join(problems)}" if problems else None


async def post_batch(request: web.Request) -> web.Response:
    """Enqueue a batch; 202 with its job id."""
    if request.content_type != "application/json":
        return error_answer(415, "send the batch as application/json")
    timeout = request.app[SETTINGS].api_body_timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        response = error_answer(
            408, f"request body not received within {timeout:g} s (HARVESTER_API_BODY_TIMEOUT)"
        )
        response.force_close()  # the rest of the body may still be on its way
        return response
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_answer(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_answer(
            400, 'body must be a JSON object: {"urls": [...], "source": ..., "job_id": ...}'
        )
    job_id = body.pop("job_id", None)
    problem = _job_id_problem(job_id)
    if problem is not None:
        return error_answer(422, problem)
    settings = request.app[SETTINGS]
    try:
        batch = parse_batch(
            (),
            body,
            max_urls=settings.max_batch_urls,
            job_id=job_id or "api",
            profiles=request.app.get(PROFILES),
            max_pages=settings.max_pages,
            webhooks=settings.webhook_secret is not None,
        )
    except BadJobError as exc:
        return error_answer(422, str(exc))
    try:
        new_id, new = await enqueue_batch(request.app[REDIS], batch, job_id=job_id)
    except JobIdTakenError as exc:
        return error_answer(409, str(exc))
    # Never a header from raw input: the id may hold anything a URL path cannot.
    location = f"/batches/{quote(new_id, safe='')}"
    body = {"job_id": new_id, "urls": batch.size, "status_url": location}
    if not new:
        # The same batch under the same id: enqueueing is idempotent, nothing was added.
        return json_answer({**body, "duplicate": True}, status=200, Location=location)
    log.info("api.enqueued", extra={"job_id": new_id, "urls": batch.size})
    return json_answer(body, status=202, Location=location)


async def get_batch(request: web.Request) -> web.Response:
    """A batch's status, rows landed so far and, once done, its summary."""
    job_id = request.match_info["job_id"]  # percent-decoded by aiohttp
    if len(job_id) > MAX_JOB_ID_LENGTH or has_control(job_id):
        # No job can have such an id, and Postgres refuses NUL in text: do not ask it.
        return error_answer(404, "no job with that id (unknown, or not a possible job id)")
    redis = request.app[REDIS]
    job = Job(job_id, redis, _queue_name=request.app[SETTINGS].queue, _deserializer=deserialize)
    status = await job.status()
    with store.translated("cannot count the rows landed"):
        landed = await request.app[POOL].fetchrow(_LANDED, job_id)
    assert landed is not None
    if status == JobStatus.not_found and not (landed["documents"] or landed["failures"]):
        return error_answer(404, f"no job {job_id!r} (unknown, or its result has expired)")
    data: dict[str, Any] = {
        "job_id": job_id,
        "status": status.value,
        "landed": {"documents": landed["documents"], "failures": landed["failures"]},
    }
    if status == JobStatus.complete:
        info = await job.result_info()
        if info is not None:
            data["success"] = info.success
            data["summary"] = info.result if info.success else {"error": str(info.result)}
    return json_answer(data)


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
    app = web.Application(middlewares=[_middleware], client_max_size=settings.api_max_body_bytes)
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
