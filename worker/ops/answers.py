"""What `harvester api`'s modules answer with: JSON bodies and errors, and the one constant-time
comparison of a secret a client sent (the bearer token, a login's token, a CSRF token)."""

from __future__ import annotations

import hmac

import orjson
from aiohttp import web


def json_answer(data: object, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_answer(status: int, message: str) -> web.Response:
    return json_answer({"error": message}, status=status)


def same_secret(given: str, expected: str) -> bool:
    """Whether ``given`` (from a request) is ``expected``, in constant time. aiohttp decodes
    header bytes that are not UTF-8 with surrogateescape: they are given back as they came, so
    such a value is just a wrong one."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
