"""What every request to `harvester api` passes through (its middleware): who may call (bearer
token, dashboard session and CSRF token, loopback only without a token), failures said as JSON
answers, security headers, compression, and the count of requests by route and status."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import Counter
from redis.exceptions import RedisError

from worker.engine import counters as metrics
from worker.errors import StoreError
from worker.ops import dashboard, sessions
from worker.ops.answers import error_answer, same_secret
from worker.ops.appkeys import CONNECTIONS, SETTINGS
from worker.settings import Settings

log = logging.getLogger("harvester.api")

REQUESTS: Final = Counter(
    "harvester_api_requests",
    "API requests by route and status",
    ["route", "status"],
    registry=metrics.REGISTRY,
)

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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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
