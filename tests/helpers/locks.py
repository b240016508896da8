"""What the scripted upstream demands before it answers: one `Lock` per credential type, and an
OAuth2 client-credentials token endpoint (`TokenEndpoint`) issuing tokens that expire.

`Upstream` (tests.helpers.upstream) serves ``/api/<lock>/...`` behind ``upstream.locks[<lock>]``
(401 without the credential, 403 with a wrong one), the token endpoint at ``/oauth/token``, and
``/echo-auth/...``: a careless API that refuses every request and echoes the credential it got
in its reason phrase, so a test can prove that only redaction keeps it out of what is stored.
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import encode_basic_auth, web


@dataclass
class TokenEndpoint:
    """OAuth2 client credentials: Basic client authentication, tokens valid ``ttl`` seconds."""

    client_id: str = "harvester"
    client_secret: str = "client-secret-not-set"
    ttl: float = 3600.0
    status: int | None = None  # answer this status instead of a token
    issued: dict[str, float] = field(default_factory=dict)  # token -> expiry (monotonic)
    fetches: int = 0
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def valid(self, token: str) -> bool:
        return self.issued.get(token, 0.0) > time.monotonic()

    def revoke_all(self) -> None:
        """Every token issued so far is refused from now on (a rotated signing key)."""
        self.issued.clear()

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        form = await request.post()
        if self.status is not None:
            return web.json_response({"error": "temporarily_unavailable"}, status=self.status)
        expected = encode_basic_auth(self.client_id, self.client_secret)
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = f"at-{next(self._serial)}-{secrets.token_hex(8)}"
        self.issued[token] = time.monotonic() + self.ttl
        body = {"access_token": token, "token_type": "Bearer", "expires_in": self.ttl}
        return web.json_response(body)


@dataclass(frozen=True)
class Lock:
    """A credential an upstream path demands: ``type`` as in a profile, ``key`` the header,
    query parameter or user name, ``secret`` its value (unused for OAuth2: a live token)."""

    type: str
    secret: str = ""
    key: str = ""

    def judge(self, request: web.Request, tokens: TokenEndpoint) -> int | None:
        """None if ``request`` carries the credential; else 401 (none) or 403 (a wrong one)."""
        given = self._given(request)
        if given is None:
            return 401
        if self.type == "oauth2_client_credentials":
            ok = given.startswith("Bearer ") and tokens.valid(given.removeprefix("Bearer "))
            return None if ok else 401  # an expired or revoked token: ask for a new one
        return None if given == self._expected() else 403

    def _given(self, request: web.Request) -> str | None:
        if self.type == "header":
            return request.headers.get(self.key)
        if self.type == "query":
            return request.query.get(self.key)
        return request.headers.get("Authorization")

    def _expected(self) -> str:
        if self.type == "bearer":
            return f"Bearer {self.secret}"
        if self.type == "basic":
            return encode_basic_auth(self.key, self.secret)
        return self.secret


def echoed_credential(request: web.Request) -> str:
    """Every credential ``request`` carries, in clear (a Basic password decoded)."""
    found = [v for k, v in request.query.items() if k == "api_key"]
    for name in ("Authorization", "X-Api-Key"):
        value = request.headers.get(name)
        if value and value.startswith("Basic "):
            value = base64.b64decode(value.removeprefix("Basic ")).decode(errors="replace")
        if value:
            found.append(value)
    return " ".join(found) or "nothing"


# One secret per profile type; the test profiles name these variables.
SECRET_ENV: dict[str, str] = {
    "TEST_BEARER_TOKEN": "bearer-secret-5d1e7c",
    "TEST_HEADER_KEY": "header-secret-93ab0f",
    "TEST_QUERY_KEY": "query-secret-4c8e21",
    "TEST_BASIC_PASSWORD": "basic-secret-b27f66",
    "TEST_CLIENT_SECRET": "client-secret-e0a4d9",
    "TEST_WRONG_SECRET": "wrong-secret-1f2e3d",
}
# profile type -> (variable of the right secret, key, the fields naming them)
_TYPES: dict[str, tuple[str, str, str]] = {
    "bearer": ("TEST_BEARER_TOKEN", "", 'token_env = "{env}"'),
    "header": ("TEST_HEADER_KEY", "X-Api-Key", 'name = "X-Api-Key"\nvalue_env = "{env}"'),
    "query": ("TEST_QUERY_KEY", "api_key", 'param = "api_key"\nvalue_env = "{env}"'),
    "basic": ("TEST_BASIC_PASSWORD", "reports", 'username = "reports"\npassword_env = "{env}"'),
    "oauth2_client_credentials": (
        "TEST_CLIENT_SECRET",
        "harvester",
        'token_url = "{token_url}"\nclient_id = "harvester"\nclient_secret_env = "{env}"',
    ),
}
PROFILE_TYPES = tuple(_TYPES)


def profiles_toml(hosts: list[str], token_url: str) -> str:
    """A credentials file with a profile per type named after it (``bearer``, ``header``, ...),
    each for ``hosts``, and a ``<type>-wrong`` twin whose secret is wrong."""
    tables = []
    for kind, (env, _key, fields) in _TYPES.items():
        for name, variable in ((kind, env), (f"{kind}-wrong", "TEST_WRONG_SECRET")):
            body = fields.format(env=variable, token_url=token_url)
            tables.append(
                f'[profiles.{name}]\ntype = "{kind}"\nhosts = {hosts!r}\n{body}\n'.replace("'", '"')
            )
    return "\n".join(tables)


def lock_all(upstream_locks: dict[str, Lock], tokens: TokenEndpoint) -> None:
    """Have ``/api/<type>/...`` demand the right secret of each profile type."""
    for kind, (env, key, _fields) in _TYPES.items():
        upstream_locks[kind] = Lock(kind, SECRET_ENV[env], key)
    tokens.client_secret = SECRET_ENV["TEST_CLIENT_SECRET"]
