"""Credential profiles applied to requests, and the OAuth2 access tokens of the process.

`Authorizer.sign` puts a profile's secret on one request (a header or a query parameter), and
`Authorizer.sign_with_token` an OAuth2 access token. The fetcher asks `may_send` before each hop,
redirects included, so a secret only ever goes to a host (and port) its profile lists, and never
from https down to http.

OAuth2 client-credentials tokens are fetched through the process's one session (so the SSRF guard
judges the token endpoint like any URL), once per profile and process: concurrent requests wait
for the one fetch in flight, and the token is kept until shortly before ``expires_in`` runs out,
or until a request carrying it is answered 401 (`Authorizer.expire`). Every secret and token is
registered with the log scrubber (`worker.logs.register_secret`) before it is sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from worker.engine.credentials import Profile
from worker.engine.guard import AddressPolicy, BlockedAddressError
from worker.engine.proxy import Egress, way_out
from worker.errors import TRANSIENT_STATUSES, AuthError, FetchError
from worker.logs import register_secret, retire_secret

OAUTH2: Final = "oauth2_client_credentials"
# A token is renewed this long before it expires (a tenth of its life when that is shorter).
REFRESH_MARGIN_S: Final = 30.0
MAX_TOKEN_RESPONSE_BYTES: Final = 64 * 1024

Clock = Callable[[], float]


def may_send(profile: Profile, url: URL, first: URL) -> bool:
    """Whether ``profile``'s secret may go with a request to ``url``, a hop of a request that
    started at ``first``: its host and port are listed, and it is no http downgrade of https."""
    if first.scheme == "https" and url.scheme != "https":
        return False
    return profile.allows(url)


def unsigned(profile: Profile | None, url: str) -> str:
    """``url`` without a query profile's parameter: a next-page link an API built from the
    signed URL it was asked (``?api_key=...&page=2``) is stored and followed clean; the
    parameter goes back on by `Authorizer.sign`, only to the profile's hosts. The rest of the
    URL is kept byte for byte."""
    if profile is None or profile.type != "query" or profile.key not in url:
        return url
    base, _, rest = url.partition("?")
    query, hashmark, fragment = rest.partition("#")
    kept = [p for p in query.split("&") if p.partition("=")[0] != profile.key]
    if len(kept) == query.count("&") + 1:
        return url
    return base + ("?" + "&".join(kept) if kept else "") + hashmark + fragment


def _credential(profile: Profile) -> tuple[str, str]:
    """The header a bearer, header or basic profile adds (its secret was registered with the
    scrubber when the profiles were loaded)."""
    if profile.type == "bearer":
        return "Authorization", f"Bearer {profile.secret}"
    if profile.type == "header":
        return profile.key, profile.secret
    return "Authorization", aiohttp.encode_basic_auth(profile.key, profile.secret)


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float | None  # clock time; None: until a 401 says otherwise


class Authorizer:
    """Applies profiles to requests; holds the process's OAuth2 tokens, one per profile."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        policy: AddressPolicy,
        *,
        egress: Egress | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._session = session
        self._policy = policy
        self._egress = egress
        self._alone: dict[str, CIMultiDictProxy[str]] = {}
        self._clock = clock
        self._tokens: dict[str, _Token] = {}
        self._expired: dict[str, _Token] = {}  # refused with 401, until replaced
        self._previous: dict[str, str] = {}  # the token before the current one
        self._locks: dict[str, asyncio.Lock] = {}

    def sign(
        self, profile: Profile, url: URL, headers: Mapping[str, str] | None
    ) -> tuple[URL, Mapping[str, str]]:
        """``url`` and ``headers`` with the secret of ``profile`` (any type but OAuth2, see
        `sign_with_token`) added, never mutated in place: the caller keeps the clean URL for the
        next hop and for what is stored. Not a coroutine: it runs once a hop."""
        if profile.type == "query":
            return url.update_query({profile.key: profile.secret}), headers or {}
        if headers:
            name, value = _credential(profile)
            return url, {**headers, name: value}
        # The usual case: headers built once per profile, in the form aiohttp takes without
        # converting them.
        alone = self._alone.get(profile.name)
        if alone is None:
            alone = self._alone[profile.name] = CIMultiDictProxy(
                CIMultiDict([_credential(profile)])
            )
        return url, alone

    async def sign_with_token(
        self, profile: Profile, headers: Mapping[str, str] | None
    ) -> tuple[Mapping[str, str], str]:
        """``headers`` with a current OAuth2 access token of ``profile`` added, and the token
        (for `expire` when the answer is 401)."""
        token = await self.token(profile)
        return {**(headers or {}), "Authorization": f"Bearer {token}"}, token

    async def token(self, profile: Profile) -> str:
        """A current access token for ``profile``: the cached one, or one fetched now (by one
        request at a time; the others wait for it)."""
        cached = self._fresh(profile.name)
        if cached is not None:
            return cached
        lock = self._locks.setdefault(profile.name, asyncio.Lock())
        async with lock:
            cached = self._fresh(profile.name)  # fetched while this request waited
            if cached is not None:
                return cached
            token = await self._fetch(profile)
            self._replace(profile.name, token)
            return token.value

    def _replace(self, name: str, token: _Token) -> None:
        """Make ``token`` the profile's current one. The one before stays registered with the
        scrubber (a late answer to a request that carried it may still echo it); older ones are
        retired."""
        old = self._tokens.get(name) or self._expired.pop(name, None)
        oldest = self._previous.pop(name, None)
        if oldest is not None and oldest not in (token.value, old and old.value):
            retire_secret(oldest)
        if old is not None and old.value != token.value:
            self._previous[name] = old.value
        self._tokens[name] = token

    def expire(self, profile: Profile, used: str) -> None:
        """A request carrying ``used`` was answered 401: forget that token, unless another
        request has already replaced it."""
        cached = self._tokens.get(profile.name)
        if cached is not None and cached.value == used:
            self._expired[profile.name] = self._tokens.pop(profile.name)

    def _fresh(self, name: str) -> str | None:
        token = self._tokens.get(name)
        if token is None or (token.renew_at is not None and self._clock() >= token.renew_at):
            return None
        return token.value

    async def _fetch(self, profile: Profile) -> _Token:
        where = f"OAuth2 token for profile {profile.name!r} from {profile.token_url}"
        url = URL(profile.token_url)
        form = {"grant_type": "client_credentials"}
        if profile.scope:
            form["scope"] = profile.scope
        # RFC 6749 2.3.1: client_secret_basic, the method every server must support.
        client = {"Authorization": aiohttp.encode_basic_auth(profile.key, profile.secret)}
        started = self._clock()
        try:
            self._policy.check(url.raw_host or "")
            # Through a configured proxy like any fetch, the target judged first.
            headers, proxy, to_proxy = await way_out(self._egress, url, client)
            async with self._session.post(
                url,
                data=form,
                headers=headers,
                proxy=proxy,
                proxy_headers=to_proxy,
                allow_redirects=False,
            ) as resp:
                body = await resp.content.read(MAX_TOKEN_RESPONSE_BYTES + 1)
                status = resp.status
        except FetchError as exc:  # the SSRF guard, or the guarded resolver
            raise AuthError(f"{where}: {exc.detail}") from exc
        except aiohttp.ClientConnectorError as exc:
            blocked = isinstance(exc.os_error, BlockedAddressError)
            reason = str(exc.os_error) if blocked else f"cannot connect: {exc.os_error}"
            raise AuthError(f"{where}: {reason}", transient=not blocked) from exc
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            raise AuthError(f"{where}: {type(exc).__name__}", transient=True) from exc
        if not 200 <= status < 300:
            raise AuthError(
                f"{where}: HTTP {status}{_oauth_error(body)}",
                transient=status in TRANSIENT_STATUSES,
            )
        value, expires_in = _read_token(body, where)
        register_secret(value)
        renew_at = None
        if expires_in is not None:
            renew_at = started + expires_in - min(REFRESH_MARGIN_S, expires_in / 10)
        return _Token(value, renew_at)


def _read_token(body: bytes, where: str) -> tuple[str, float | None]:
    """The access token and its lifetime in seconds from a token endpoint's JSON answer."""
    if len(body) > MAX_TOKEN_RESPONSE_BYTES:
        raise AuthError(f"{where}: answer over {MAX_TOKEN_RESPONSE_BYTES} bytes")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise AuthError(f"{where}: answer is not JSON") from None
    token = data.get("access_token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token or not (token.isascii() and token.isprintable()):
        raise AuthError(f"{where}: answer has no usable access_token")
    kind = data.get("token_type", "bearer")
    if not isinstance(kind, str) or kind.lower() != "bearer":
        raise AuthError(f"{where}: token_type {str(kind)[:40]!r} is not bearer")
    expires = data.get("expires_in")
    if expires is None:
        return token, None
    if isinstance(expires, bool) or not isinstance(expires, int | float) or expires <= 0:
        raise AuthError(f"{where}: expires_in is not a positive number")
    return token, float(expires)


def _oauth_error(body: bytes) -> str:
    """The RFC 6749 ``error`` code of a refusal, when it is a short plain word."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    code = data.get("error") if isinstance(data, dict) else None
    if isinstance(code, str) and code.isascii() and code.replace("_", "").isalnum():
        return f" ({code[:60]})"
    return ""
