"""The dashboard of `harvester api`: its static page and the JSON endpoints it polls.

    GET  /                  the dashboard (or, with a token and no session, the login form)
    GET  /static/{name}     its scripts and styles (shipped in the package, worker/ops/static)
    POST /login             {"token"} -> a session cookie;  POST /logout ends it
    GET  /session           how this request is authorised, and the session's CSRF token
    GET  /status            `harvester status --json` (`worker.ops.status.gather`)
    GET  /status/history    URLs landed per minute by outcome, failures per minute by kind
    GET  /status/progress   ?job=ID (repeatable): URLs of each running job, and landed
    GET  /failures          ?kind=&job=&host=&limit=: failure rows, newest first
    POST /failures/replay   {"ids": [...]}: replay these failure rows as new jobs
    GET  /sources           registered sources;  POST /sources/enabled {"ids", "enabled"}

Every endpoint reads through the functions the command line uses (`status`, `replay`,
`sources`) or, for the charts, `trends`; who may call them is decided in `worker.ops.middleware`
(bearer token, or a session and its CSRF token for a POST).
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import orjson
from aiohttp import web
from prometheus_client import Counter

from worker.engine import counters as metrics
from worker.ops import sessions, status, trends
from worker.ops.answers import json_answer, same_secret
from worker.ops.appkeys import POOL, REDIS, SETTINGS
from worker.ops.queuehistory import QueueHistory, sampling
from worker.ops.sessions import Sessions
from worker.queue.checks import MAX_JOB_ID_LENGTH, has_control
from worker.scheduling import replay
from worker.scheduling import sources as sources_
from worker.settings import Settings

log = logging.getLogger("harvester.api")

LOGINS_REFUSED: Final = Counter(
    "harvester_api_logins_refused",
    "Dashboard logins refused for a wrong token",
    registry=metrics.REGISTRY,
)

SESSIONS: Final = web.AppKey("sessions", Sessions)
QUEUE_HISTORY: Final = web.AppKey("queue_history", QueueHistory)
JOB_TOTALS: Final = web.AppKey("job_totals", trends.JobTotals)
STATIC: Final = web.AppKey("static", dict)

MAX_FAILURES: Final = 1000
MAX_SELECTION: Final = 1000
MAX_ID: Final = 2**63 - 1  # a bigint: a larger id is a client's mistake, never an outage
MAX_PROGRESS_JOBS: Final = 100
MAX_SOURCES: Final = 10_000
# Paths served without a token or session: the page shell, its files, and the login itself.
PUBLIC_PATHS: Final = frozenset({"/", "/login"})
STATIC_PREFIX: Final = "/static/"
_TYPES: Final = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(STATIC_PREFIX)


def load_static() -> dict[str, tuple[bytes, str]]:
    """The dashboard's files by name, read once from the package: (body, content type)."""
    root = importlib.resources.files("worker.ops").joinpath("static")
    files = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            files[entry.name] = (entry.read_bytes(), _TYPES[suffix])
    return files


def _json(data: object, status_code: int = 200) -> web.Response:
    return json_answer(data, status_code, **{"Cache-Control": "no-store"})


def _file(request: web.Request, name: str) -> web.Response:
    found = request.app[STATIC].get(name)
    if found is None:
        raise web.HTTPNotFound(reason="no such dashboard file")
    body, content_type = found
    return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "no-cache"})


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(reason="send application/json")
    timeout = request.app[SETTINGS].api_body_timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"request body not received within {timeout:g} s (HARVESTER_API_BODY_TIMEOUT)"
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(reason=f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="body must be a JSON object")
    return body


def _ids(body: dict[str, Any]) -> list[int]:
    ids = body.get("ids")
    if (
        not isinstance(ids, list)
        or not 1 <= len(ids) <= MAX_SELECTION
        or not all(type(i) is int and 0 < i <= MAX_ID for i in ids)
    ):
        raise web.HTTPUnprocessableEntity(
            reason=f"'ids' must be a list of 1 to {MAX_SELECTION} positive integers "
            f"(at most {MAX_ID}: row ids are bigint)"
        )
    return ids


def _texts(request: web.Request, name: str) -> list[str]:
    """The non-empty values of a query parameter; 400 for one Postgres could not take (a NUL)
    or no job id could be (too long, control characters)."""
    values = [v for v in request.query.getall(name, []) if v]
    for value in values:
        if len(value) > MAX_JOB_ID_LENGTH or has_control(value):
            raise web.HTTPBadRequest(
                reason=f"'{name}' must be at most {MAX_JOB_ID_LENGTH} characters, without "
                "control characters"
            )
    return values


def _text(request: web.Request, name: str) -> str | None:
    values = _texts(request, name)
    return values[0] if values else None


def _int_param(request: web.Request, name: str, default: int, most: int) -> int:
    """A query parameter that is an integer from 1 to ``most``; 400 otherwise."""
    text = request.query.get(name, str(default))
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= most:
        raise web.HTTPBadRequest(reason=f"'{name}' must be an integer from 1 to {most}")
    return int(text)


def _authorised_by(request: web.Request, settings: Settings) -> str:
    """How the request got in: a session cookie, the bearer token, or open (no token set)."""
    if settings.api_token is None:
        return "open"
    if sessions.session_of(request, request.app[SESSIONS]) is not None:
        return "session"
    return "bearer"


async def index(request: web.Request) -> web.Response:
    """The dashboard; the login form alone while a token is set and there is no session."""
    settings = request.app[SETTINGS]
    if settings.api_token is not None and (
        sessions.session_of(request, request.app[SESSIONS]) is None
    ):
        return _file(request, "login.html")
    return _file(request, "index.html")


async def static(request: web.Request) -> web.Response:
    return _file(request, request.match_info["name"])


async def login(request: web.Request) -> web.Response:
    """Exchange the API token for a session cookie (and nothing else: the token never comes
    back, and the cookie holds only a random id)."""
    settings = request.app[SETTINGS]
    if settings.api_token is None:
        return _json({"error": "no login: without HARVESTER_API_TOKEN the API is open"}, 404)
    # What the browser says of the page that sent it: a proxy that rewrites Host does not
    # change it (an Origin compared with Host would refuse every login behind such a proxy).
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return _json({"error": "login from another site refused"}, 403)
    body = await _body(request)
    token = body.get("token")
    if not isinstance(token, str) or not same_secret(token, settings.api_token.get_secret_value()):
        log.warning("dashboard.login_refused", extra={"peer": request.remote})  # never the token
        LOGINS_REFUSED.inc()
        return _json({"error": "wrong token"}, 401)
    session_id, _ = request.app[SESSIONS].open()
    response = _json({"auth": "session"})
    sessions.set_cookie(response, request, session_id)
    return response


async def logout(request: web.Request) -> web.Response:
    request.app[SESSIONS].close(request.cookies.get(sessions.COOKIE))
    response = _json({"auth": None})
    sessions.clear_cookie(response, request)
    return response


async def get_session(request: web.Request) -> web.Response:
    """How this request is authorised and, for a session, its CSRF token (never compressed:
    a secret beside reflected input is what BREACH reads)."""
    session = sessions.session_of(request, request.app[SESSIONS])
    return _json(
        {
            "auth": _authorised_by(request, request.app[SETTINGS]),
            "csrf": session.csrf if session is not None else None,
        }
    )


async def get_status(request: web.Request) -> web.Response:
    app = request.app
    return _json((await status.gather(app[SETTINGS], app[REDIS], app[POOL])).as_dict())


async def get_history(request: web.Request) -> web.Response:
    minutes = _int_param(request, "minutes", trends.HISTORY_MINUTES, trends.MAX_HISTORY_MINUTES)
    landed = (await trends.history(request.app[POOL], minutes)).as_dict()
    return _json({**landed, "queue": request.app[QUEUE_HISTORY].as_dict()})


async def get_progress(request: web.Request) -> web.Response:
    job_ids = list(dict.fromkeys(_texts(request, "job")))
    if len(job_ids) > MAX_PROGRESS_JOBS:
        raise web.HTTPBadRequest(reason=f"at most {MAX_PROGRESS_JOBS} 'job' parameters")
    app = request.app
    rows = await trends.progress(app[REDIS], app[POOL], job_ids, app[JOB_TOTALS])
    return _json(rows)


async def get_failures(request: web.Request) -> web.Response:
    rows = await replay.list_failures(
        request.app[POOL],
        job_id=_text(request, "job"),
        kinds=_texts(request, "kind") or None,
        host=_text(request, "host"),
        limit=_int_param(request, "limit", 100, MAX_FAILURES),
    )
    return _json(rows)


async def post_replay(request: web.Request) -> web.Response:
    """Replay the selected failure rows (those not replayed yet) as new jobs."""
    ids = _ids(await _body(request))
    settings = request.app[SETTINGS]
    result = await replay.replay_failures(
        request.app[POOL],
        request.app[REDIS],
        ids=ids,
        reason="api",
        batch_size=min(settings.max_batch_urls, 1000),
        limit=len(ids),
    )
    return _json({"jobs": result.jobs, "urls": result.urls})


async def get_sources(request: web.Request) -> web.Response:
    rows = await sources_.list_sources(
        request.app[POOL], limit=_int_param(request, "limit", 1000, MAX_SOURCES)
    )
    return _json([r.as_dict() for r in rows])


async def post_sources_enabled(request: web.Request) -> web.Response:
    body = await _body(request)
    ids = _ids(body)
    enabled = body.get("enabled")
    if not isinstance(enabled, bool):
        raise web.HTTPUnprocessableEntity(reason="'enabled' must be true or false")
    changed = await sources_.set_enabled(request.app[POOL], [str(i) for i in ids], enabled)
    return _json({"changed": changed, "enabled": enabled})


def add_routes(app: web.Application) -> None:
    """Register the dashboard's routes, load its files, and sample the queue while the API
    runs (after the API's own resources: it reads through their Redis)."""
    app[SESSIONS] = Sessions()
    app[STATIC] = load_static()
    app[QUEUE_HISTORY] = QueueHistory()
    app[JOB_TOTALS] = trends.JobTotals()

    async def sample_queue(app: web.Application) -> AsyncIterator[None]:
        async with sampling(app[QUEUE_HISTORY], app[REDIS], app[SETTINGS].queue):
            yield

    app.cleanup_ctx.append(sample_queue)
    r = app.router
    r.add_get("/", index)
    r.add_get(STATIC_PREFIX + "{name}", static)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/session", get_session)
    r.add_get("/status", get_status)
    r.add_get("/status/history", get_history)
    r.add_get("/status/progress", get_progress)
    r.add_get("/failures", get_failures)
    r.add_post("/failures/replay", post_replay)
    r.add_get("/sources", get_sources)
    r.add_post("/sources/enabled", post_sources_enabled)
