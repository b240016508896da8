"""The dashboard's browser sessions: a login with the API token opens one, kept in this API
process's memory under a random id that is all the cookie holds (never the token), with a
CSRF token of its own that every state-changing request must send back in ``X-CSRF-Token``.

Sessions end on logout, after `SESSION_TTL_S`, or when the API restarts (log in again); at
most `MAX_SESSIONS` live at once, the oldest dropped first. A cookie is only ever ambient
authority in a browser: a request with a valid bearer token needs no CSRF token.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from worker.ops.answers import same_secret

COOKIE: Final = "harvester_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_TTL_S: Final = 12 * 3600.0
MAX_SESSIONS: Final = 1000


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser: its CSRF token and when it expires (monotonic seconds)."""

    csrf: str
    expires: float


class Sessions:
    """Sessions by id, oldest first; ``clock`` is injectable for tests."""

    def __init__(
        self,
        ttl_s: float = SESSION_TTL_S,
        cap: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        self._cap = cap
        self._clock = clock
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def open(self) -> tuple[str, Session]:
        """A new session: (its id, for the cookie; the session)."""
        self._prune()
        while len(self._by_id) >= self._cap:
            self._by_id.popitem(last=False)
        session_id = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=self._clock() + self._ttl)
        self._by_id[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id, or None (unknown, expired, or no id)."""
        if not session_id:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._by_id[session_id]
            return None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._by_id.pop(session_id, None)

    def _prune(self) -> None:
        now = self._clock()
        for session_id in [k for k, s in self._by_id.items() if s.expires <= now]:
            del self._by_id[session_id]


def session_of(request: web.Request, sessions: Sessions) -> Session | None:
    """The live session the request's cookie names, or None."""
    return sessions.get(request.cookies.get(COOKIE))


def csrf_ok(request: web.Request, session: Session) -> bool:
    """Whether the request sends its session's CSRF token back (constant-time compare)."""
    return same_secret(request.headers.get(CSRF_HEADER, ""), session.csrf)


def set_cookie(response: web.StreamResponse, request: web.Request, session_id: str) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, and Secure whenever served over HTTPS
    (directly, or behind a proxy that says so in X-Forwarded-Proto)."""
    response.set_cookie(
        COOKIE,
        session_id,
        httponly=True,
        samesite="Strict",
        secure=is_https(request),
        path="/",
        max_age=int(SESSION_TTL_S),
    )


def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(
        COOKIE, path="/", secure=is_https(request), httponly=True, samesite="Strict"
    )


def is_https(request: web.Request) -> bool:
    """Served over HTTPS: TLS here, or a TLS-terminating proxy in front that says so."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
