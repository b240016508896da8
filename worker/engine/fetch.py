"""Fetching: requests through the process's one session (`worker.engine.session`), redirects and
the retry policy; what an answer must be to land is judged in `worker.engine.responses`.

A fetch never raises for a URL's own trouble: it returns a `Fetched` document or a `Failed`
outcome. A `Request` carries its method, JSON body and extra headers; redirects are followed as
browsers and aiohttp do (a 303, or a 301/302 after POST, becomes a GET without the body; 307 and
308 keep method and body), and a request of any method is retried on transient failures alike.
The first attempt runs outside tenacity so the happy path pays nothing for the retry machinery;
only after a first transient failure does the call enter an `AsyncRetrying` loop, bounded by
attempts and by time, with jittered exponential backoff that honours ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
)
from yarl import URL

from worker.engine.auth import OAUTH2, Authorizer, may_send
from worker.engine.bodies import check_json, clean_detail
from worker.engine.credentials import Profile
from worker.engine.outcomes import Failed, Fetched, NotModified, Outcome, ResponseMeta, Validators
from worker.engine.pacing import NO_TURN, HostLimiter, HostPacer, Turn, limiter_host, turn_of
from worker.engine.proxy import Egress
from worker.engine.requests import Request
from worker.engine.responses import Answer, next_hop, read_answer
from worker.engine.session import address_policy, map_client_error, proxy_refusal
from worker.engine.slots import PrioritySemaphore
from worker.errors import (
    FetchError,
    HTTPStatusError,
    InvalidJSONError,
    InvalidURLError,
    RedirectError,
)
from worker.settings import Settings

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_JSON_BODY: Final = {"Content-Type": "application/json"}
# A server answering these with Retry-After is asking the whole host to slow down.
_HOST_PAUSE_STATUS: Final = frozenset({429, 503})

Sleep = Callable[[float], Awaitable[None]]
# Waits until the caller can hold a body of that many bytes (the pipeline's byte budget).
Admit = Callable[[int], Awaitable[None]]
# Builds the `Fetched` of a final 2xx answer from its status, body, elapsed ms, attempts, cache
# headers and Link headers: a walk's page is built once, with its page's identity and next URL,
# instead of as a plain outcome the walk then copies (once a page).
Build = Callable[[int, bytes, int, int, ResponseMeta | None, tuple[str, ...]], Fetched]


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, FetchError) and exc.transient


class Fetcher:
    """Fetches URLs through one shared session, bounded by a per-process semaphore and paced
    per host by a `HostLimiter` that every job of the process shares: the fleet's (Redis) when
    the runtime gives one, else a `HostPacer` of this process's own."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        sleep: Sleep = asyncio.sleep,
        limiter: HostLimiter | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._body_limit = settings.max_body_bytes
        self._policy = address_policy(settings)
        # None without a proxy: then a request pays two None tests for proxies, per hop.
        self._egress = Egress.from_settings(settings, self._policy)
        # In-flight requests of the whole process, handed out oldest job first (worker.slots).
        self._slots = PrioritySemaphore(settings.concurrency)
        self._sleep = sleep
        self.limiter: HostLimiter = limiter or HostPacer(
            settings.host_rps, pause_cap=settings.retry_after_cap, sleep=sleep
        )
        self.auth = Authorizer(session, self._policy, egress=self._egress)

    async def fetch(
        self,
        request: Request | str,
        priority: int = 0,
        validators: Validators | None = None,
        admit: Admit | None = None,
        profile: Profile | None = None,
        *,
        links: bool = False,
        at: str | None = None,
        build: Build | None = None,
    ) -> Outcome:
        """Fetch ``request`` (or a plain GET of a URL, as enqueued) into an `Outcome`; never
        raises for the URL's own faults. The outcome carries the `Request` it answers.

        When slots are scarce, fetches with a lower ``priority`` value go first. With
        ``validators`` the request is conditional: a 304 comes back as `NotModified`, and a
        `Fetched` carries the response's cache headers in ``meta``. A body is passed to
        ``admit`` before its request slot is given back, so bodies waiting for the caller's room
        never outnumber the slots. With a credential ``profile``, each hop to a host the profile
        lists carries its secret (`worker.engine.auth`); the outcome keeps ``url`` as given.
        With ``links`` a `Fetched` carries the response's ``Link`` headers (a paginated walk
        reads its next page there). ``at`` fetches the request at another URL (a later page of
        a walk: its method, body and headers at the page's URL, with no `Request` built for
        it); outcomes then have that URL. With ``build``, a 2xx answer's `Fetched` is what
        ``build`` makes of it.
        """
        started = time.monotonic()
        req = request if isinstance(request, Request) else Request(request)
        url = req.url if at is None else at
        try:
            target = self._parse(url)
        except FetchError as exc:
            return Failed(url, exc.kind, clean_detail(exc.detail), exc.status, 0, request=req)
        call = _Call(target, req, priority, validators, admit, profile, links)
        attempts = 1
        try:
            status, body, meta, link = await self._attempt(call)
        except FetchError as exc:
            if not exc.transient or self._settings.max_attempts == 1:
                return _failed(req, url, exc, attempts)
            # Slow path: only now does the call pay for tenacity.
            try:
                status, body, meta, link, attempts = await self._retry(call, exc, started)
            except _RetriesExhausted as gave_up:
                return _failed(req, url, gave_up.last, gave_up.attempts)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        if status == 304 and meta is not None:
            return NotModified(url, elapsed_ms, attempts, meta)
        if build is not None:
            return build(status, body, elapsed_ms, attempts, meta, link)
        return Fetched(url, status, body, elapsed_ms, attempts, meta, req, link)

    def _parse(self, raw: str) -> URL:
        if len(raw) > self._settings.max_url_length:
            raise InvalidURLError(f"URL longer than {self._settings.max_url_length} characters")
        try:
            url = URL(raw.strip())
            # .host runs IDNA decoding, which refuses malformed labels (e.g. "xn--a").
            host = url.host
            scheme = url.scheme
            return_url = url.with_fragment(None) if url.raw_fragment else url
        except (ValueError, TypeError) as exc:  # UnicodeError is a ValueError
            raise InvalidURLError(f"cannot parse URL: {exc}") from exc
        if scheme not in ("http", "https"):
            raise InvalidURLError(f"scheme {scheme!r} is not http or https")
        if not host:
            raise InvalidURLError("URL has no host")
        return return_url

    def _wait_for(self, exc: FetchError, attempt: int) -> float:
        s = self._settings
        if exc.retry_after is not None:
            return min(exc.retry_after, s.retry_after_cap)
        return s.fetch_backoff.delay(attempt)

    async def _retry(
        self, call: _Call, first: FetchError, started: float
    ) -> tuple[int, bytes, ResponseMeta | None, tuple[str, ...], int]:
        s = self._settings
        attempts = 1
        # The time bound covers the waits too: never sleep past it to try once more.
        deadline = started + s.retry_max_time
        first_wait = self._wait_for(first, 1)
        if time.monotonic() + first_wait >= deadline:
            raise _RetriesExhausted(first, attempts)
        await self._sleep(first_wait)

        def wait(state: RetryCallState) -> float:
            assert state.outcome is not None
            exc = state.outcome.exception()
            assert isinstance(exc, FetchError)
            return self._wait_for(exc, state.attempt_number + 1)

        retrying = AsyncRetrying(
            stop=stop_any(
                stop_after_attempt(s.max_attempts - 1),
                stop_before_delay(deadline - time.monotonic()),
            ),
            wait=wait,
            retry=retry_if_exception(_is_transient),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    status, body, meta, link = await self._attempt(call)
        except FetchError as exc:
            raise _RetriesExhausted(exc, attempts) from exc
        return status, body, meta, link, attempts

    async def _attempt(self, call: _Call) -> Answer:
        # The first hop waits before taking a slot, so a slow host's queue never holds slots
        # other hosts need; its ticket is taken in `_follow` (or dropped on the way out). On the
        # happy path nothing is awaited here but `_follow` (CPU per URL, issue 17): a host the
        # limiter leaves free is not waited for, and a free slot is taken without a coroutine.
        host = limiter_host(call.target.host)
        first = NO_TURN if self.limiter.free(host) else turn_of(await self.limiter.wait(host))
        slots = self._slots
        try:
            if not slots.try_acquire():
                await slots.acquire(call.priority)
            # Nothing is awaited between taking the slot and this try, so a cancellation cannot
            # come between them and keep the slot.
            try:
                status, body, meta, link = await self._follow(call, first)
            except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
                raise map_client_error(exc) from exc
            else:
                # Still in the slot: a body waiting for room counts against the slots, so at
                # most HARVESTER_CONCURRENCY bodies per process are held outside the byte budget.
                if call.admit is not None and body:
                    await call.admit(len(body))
            finally:
                slots.release()
        finally:
            if first is not NO_TURN:
                await first.close()
        return status, body, meta, link

    async def _follow(
        self, call: _Call, first_turn: Turn | None, *, refreshed: bool = False
    ) -> Answer:
        """The request's hops, each paced by the limiter (every redirect hop asks for a turn of
        its own; the first may come with one) and each turn given back once its answer is in.
        An OAuth2 token refused with 401 is renewed once, and the request made again."""
        url, request, validators, profile = call.target, call.request, call.validators, call.profile
        seen: set[URL] = set()  # hops so far, filled only when there is a redirect
        method = request.method
        data = None if request.body is None else request.body.encoded
        headers = _headers(request, validators, with_body=data is not None)
        for hop in range(self._settings.max_redirects + 1):
            # The host as it goes on the wire (punycode, a zone id still percent-encoded).
            self._policy.check(url.raw_host or "")
            wire, sent, token = (
                (url, headers, None)  # no secret to add: no coroutine to sign the hop
                if profile is None
                else await self._signed(url, call.target, headers, profile)
            )
            egress = self._egress  # `way_out` inline: no coroutine per hop without a proxy
            sent, proxy, to_proxy = (
                (sent, None, None) if egress is None else await egress.way(url, sent)
            )
            if hop or first_turn is None:
                host = limiter_host(url.host)
                free = self.limiter.free(host)
                turn = NO_TURN if free else turn_of(await self.limiter.wait(host, in_slot=True))
            else:
                turn = first_turn
            async with (
                turn,
                self._session.request(
                    method,
                    wire,
                    data=data,
                    allow_redirects=False,
                    headers=sent,
                    proxy=proxy,
                    proxy_headers=to_proxy,
                ) as resp,
            ):
                status = resp.status
                if status == 407 and proxy is not None:
                    raise proxy_refusal(status)
                if status == 401 and token is not None and not refreshed:
                    break  # a stale token: renewed below, once this answer and turn are let go
                if status in _REDIRECTS:
                    seen.add(url)
                    url = next_hop(url, resp, seen)
                    if status == 303 or (status in (301, 302) and method == "POST"):
                        # As browsers and aiohttp do: the next hop is a GET without the body.
                        if data is not None:
                            headers = _headers(request, validators, with_body=False)
                        method, data = "GET", None
                    continue
                try:
                    answer = await read_answer(resp, validators, call.links, self._body_limit)
                except HTTPStatusError as exc:
                    if exc.status in _HOST_PAUSE_STATUS and exc.retry_after is not None:
                        await self.limiter.pause(limiter_host(url.host), exc.retry_after)
                    raise
            if answer[0] != 304:
                try:
                    check_json(answer[1])
                except InvalidJSONError as exc:
                    exc.status = status
                    raise
            return answer
        else:
            raise RedirectError(f"more than {self._settings.max_redirects} redirects")
        # The 401 answered an OAuth2 access token: a new one, and the request once more.
        assert profile is not None
        assert token is not None
        self.auth.expire(profile, token)
        return await self._follow(call, None, refreshed=True)

    async def _signed(
        self, url: URL, first: URL, headers: Mapping[str, str] | None, profile: Profile | None
    ) -> tuple[URL, Mapping[str, str] | None, str | None]:
        """The URL and headers a hop goes with, and the OAuth2 token it carries if any. Each hop
        is judged on its own: a redirect elsewhere goes without the secret. The clean ``url``
        stays for the next hop's join; only the request sees the signed one."""
        if profile is None or not may_send(profile, url, first):
            return url, headers, None
        if profile.type == OAUTH2:
            sent, token = await self.auth.sign_with_token(profile, headers)
            return url, sent, token
        wire, sent = self.auth.sign(profile, url, headers)
        return wire, sent, None


def _headers(
    request: Request, validators: Validators | None, *, with_body: bool
) -> dict[str, str] | None:
    """The headers a request adds to the session's (None when it adds none: a plain GET)."""
    if validators is None and not request.headers and not with_body:
        return None
    headers = validators.headers() if validators is not None else {}
    own = request.headers
    # A caller's own Content-Type (application/vnd.x+json) wins over ours; none goes with a
    # request that lost its body to a redirect.
    if with_body and not any(name.lower() == "content-type" for name in own):
        headers.update(_JSON_BODY)
    for name, value in own.items():
        if with_body or name.lower() != "content-type":
            headers[name] = value
    return headers


def _failed(request: Request, url: str, exc: FetchError, attempts: int) -> Failed:
    detail = clean_detail(exc.detail)
    return Failed(url, exc.kind, detail, exc.status, attempts, exc.retry_after, request=request)


@dataclass(slots=True)
class _Call:
    """One `Fetcher.fetch`: the parsed URL, the request and how it is to be made, for every
    attempt and hop of it. Not frozen (it never leaves `Fetcher`): a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, once a URL."""

    target: URL
    request: Request
    priority: int
    validators: Validators | None
    admit: Admit | None
    profile: Profile | None
    links: bool


class _RetriesExhausted(Exception):
    def __init__(self, last: FetchError, attempts: int) -> None:
        super().__init__(last.detail)
        self.last = last
        self.attempts = attempts
