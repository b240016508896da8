"""The process's one aiohttp session (a bounded connector, explicit timeouts, the SSRF guard at
resolution and at every socket, TLS trust) and aiohttp's errors translated into harvester's
`FetchError` tree: the boundary with aiohttp that fetches and webhooks share.
"""

from __future__ import annotations

import math
import ssl
import time
from email.utils import parsedate_to_datetime

import aiohttp
from aiohttp.resolver import DefaultResolver

from worker.engine.guard import (
    PERMANENT_DNS_ERRORS,
    AddressPolicy,
    BlockedAddressError,
    GuardedResolver,
    ProxyEndpoints,
    guarded_socket_factory,
)
from worker.engine.proxy import proxy_endpoints
from worker.errors import (
    TRANSIENT_STATUSES,
    BlockedError,
    ConnectError,
    FetchError,
    InvalidURLError,
    ProtocolError,
    ProxyError,
    TimeoutError_,
)
from worker.settings import Settings


def address_policy(settings: Settings) -> AddressPolicy:
    """The SSRF policy the settings ask for."""
    return AddressPolicy(settings.allowed_networks, allow_zone_ids=settings.allow_ipv6_zone_ids)


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The process's one `ClientSession`: bounded connector, explicit timeouts, SSRF guard.

    Must be called inside a running event loop; close it with ``await session.close()``.
    """
    policy = address_policy(settings)
    # The operator's proxies may be private; what they connect to is judged by TargetCheck.
    endpoints = proxy_endpoints(settings)
    proxies = ProxyEndpoints(endpoints) if endpoints else None
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency,
        limit_per_host=settings.per_host,
        resolver=GuardedResolver(DefaultResolver(), policy, proxies),
        # The last word of the SSRF guard: every address is judged as its socket is created.
        socket_factory=guarded_socket_factory(policy, proxies),
        ttl_dns_cache=60,
        enable_cleanup_closed=True,
        ssl=tls_context(settings),
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.request_timeout,
        connect=settings.connect_timeout,
        sock_read=settings.read_timeout,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={
            "User-Agent": settings.user_agent,
            "Accept": "application/json",
        },
        # Cookies from one upstream must never leak into requests for another job.
        cookie_jar=aiohttp.DummyCookieJar(),
        raise_for_status=False,
        auto_decompress=True,
        max_line_size=16 * 1024,
        max_field_size=16 * 1024,
    )


def tls_context(settings: Settings) -> ssl.SSLContext | bool:
    """The system's CAs plus HARVESTER_CA_FILE's, or True (aiohttp's default) without one."""
    if settings.ca_file is None:
        return True
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=settings.ca_file)
    return context


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < math.inf else None  # refuse NaN, inf, negatives
    try:
        # A date whose zone offset is absurd ("+99999999999999999") overflows in the stdlib.
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when - now)


def map_client_error(exc: BaseException) -> FetchError:
    """Translate an aiohttp (or resolver) exception into our `FetchError` tree: the one boundary."""
    if isinstance(exc, TimeoutError):
        return TimeoutError_("timed out")
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, BlockedAddressError
    ):
        return BlockedError(str(exc.os_error))
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return ProxyError(f"cannot connect to the proxy: {exc.os_error}", transient=True)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return proxy_refusal(exc.status)
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # A name that does not exist will not exist on the next attempt either.
        gone = getattr(exc.os_error, "errno", None) in PERMANENT_DNS_ERRORS
        return ConnectError(f"DNS lookup failed: {exc.os_error}", transient=not gone)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return ConnectError(f"TLS error: {exc}", transient=False)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectError(f"cannot connect: {exc.os_error}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientConnectionResetError):
        return ConnectError(f"connection lost: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        # A body that cannot be decoded will not decode next time; a cut one might be whole.
        undecodable = "content-encoding" in str(exc).lower()
        return ProtocolError(f"bad body: {exc}", transient=not undecodable)
    if isinstance(exc, aiohttp.ClientResponseError):
        return ProtocolError(f"invalid HTTP response: {exc.message}", transient=False)
    if isinstance(exc, aiohttp.InvalidURL):
        return InvalidURLError(f"invalid URL: {exc}")
    if isinstance(exc, aiohttp.ClientOSError):
        return ConnectError(f"connection error: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return ProtocolError(f"{type(exc).__name__}: {exc}")
    # IDNA and similar refusals of a host name, raised while it is resolved.
    return InvalidURLError(f"invalid host: {exc}")


def proxy_refusal(status: int) -> ProxyError:
    """The proxy answered ``status`` instead of forwarding the request (or opening a tunnel)."""
    if status == 407:
        return ProxyError(
            "the proxy refused the credentials (HTTP 407): check the user in HARVESTER_PROXY_URL "
            "and the variable HARVESTER_PROXY_PASSWORD_ENV names",
            status=status,
        )
    return ProxyError(
        f"the proxy answered HTTP {status} instead of reaching the target",
        status=status,
        transient=status in TRANSIENT_STATUSES,
    )
