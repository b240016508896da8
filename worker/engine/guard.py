"""The SSRF guard: which addresses harvester may connect to, judged where it matters.

Three checks, each on what the next step will actually use:

1. **The URL's host, before the request** (`AddressPolicy.check`): an IP literal is judged at
   once; a host that is neither a valid IP address nor a valid host name is refused (never waved
   through to be "judged later"); an IPv6 literal with a zone id (``[fe80::1%25eth0]``) is
   refused unless HARVESTER_ALLOW_IPV6_ZONE_IDS is set. Every redirect hop passes here too.
2. **Every address DNS returns** (`GuardedResolver`): addresses the policy refuses are dropped, so
   a name that points inside (DNS rebinding, ``localtest.me``) is refused before connecting.
3. **Every socket, as it is created** (`guarded_socket_factory`): the address a socket is about
   to connect to is parsed the way the kernel will parse it (``getaddrinfo`` with
   ``AI_NUMERICHOST``) and judged, zone id included. This is the authority: whatever path an
   address took (a literal, DNS, anything an HTTP library's heuristics call a literal), nothing
   reaches ``connect()`` without passing the policy.

With a forward proxy the connector connects to the proxy, not to the target, so checks 2 and 3
see only the proxy's address. The proxy is the operator's choice and may be private: its
host:port (`ProxyEndpoints`) is let through checks 2 and 3. The target is judged before the
request instead (`TargetCheck`): resolved here, and refused if any of its addresses is refused.

The policy refuses loopback, private, link-local (cloud metadata), CGNAT, multicast, reserved,
documentation and site-local ranges and a few host-local cloud endpoints, and IPv6 forms that
carry such an IPv4 address (mapped, translated, compatible, 6to4, Teredo, NAT64), unless
HARVESTER_ALLOWED_NETWORKS opens a range.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final
from urllib.parse import unquote

from aiohttp.abc import AbstractResolver, ResolveResult

from worker.errors import BlockedError, ConnectError, FetchError, InvalidURLError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
AddrInfo = tuple[int, int, int, str, tuple[str, int] | tuple[str, int, int, int]]

# Ranges refused unless HARVESTER_ALLOWED_NETWORKS opens them. `is_global` covers most of these;
# they are listed so the policy reads plainly and survives changes in the stdlib's tables.
_BLOCKED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",  # loopback
        "168.63.129.16/32",  # Azure's host-local endpoint (wireserver)
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local (includes fd00:ec2::254, AWS metadata over IPv6)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed by some stacks)
        "ff00::/8",  # multicast
        "2001:db8::/32",  # documentation
        "100::/64",  # discard
    )
)

_NAT64: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated, ::ffff:0:a.b.c.d

# A host name as it reaches the wire (yarl gives IDNA names as punycode): dot-separated labels of
# letters, digits, hyphens and underscores (seen in real names, if not in the RFCs).
_HOST_NAME = re.compile(
    r"(?=.{1,253}\.?\Z)(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?\Z"
)

_VERDICT_CACHE_SIZE = 10_000
# Lookup failures that say the name does not exist: the next attempt will not find it either.
PERMANENT_DNS_ERRORS: Final = frozenset(
    {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
)
# How long a proxied target's verdict is kept (the connector's DNS cache keeps answers as long).
TARGET_VERDICT_TTL: Final = 60.0


def host_problem(host: str) -> str | None:
    """What makes ``host`` (a URL's raw host) unusable as written, whatever the policy: None for
    a valid host name, IPv4 address or (bracketed or not) IPv6 address."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in literal or "%" in literal or "[" in literal:
        try:
            ipaddress.IPv6Address(unquote(literal))
        except ValueError:
            return f"[{literal}] is not a valid IPv6 address"
        return None
    if literal.rstrip(".").replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(literal.rstrip("."))
        except ValueError:
            return f"{host!r} is not a canonical IPv4 address"
        return None
    if not _HOST_NAME.match(literal):
        return f"{host!r} is neither an IP address nor a valid host name"
    return None


class BlockedAddressError(OSError):
    """A socket was about to connect to an address the policy refuses.

    An `OSError` so that the connection machinery handles it as a failed connect attempt (and
    closes the socket); `worker.engine.session.map_client_error` turns it into a `BlockedError`.
    """


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, translated, compatible, 6to4, Teredo,
    NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    packed = addr.packed
    if addr in _SIIT or any(addr in n for n in _NAT64):
        return ipaddress.IPv4Address(packed[12:])
    if packed[:12] == bytes(12) and int(addr) > 0xFFFF:
        return ipaddress.IPv4Address(packed[12:])  # deprecated IPv4-compatible ::a.b.c.d
    return None


class AddressPolicy:
    """Decides whether an address may be connected to, and whether a URL's host is acceptable."""

    def __init__(self, allowed: Sequence[Network] = (), *, allow_zone_ids: bool = False) -> None:
        self.allowed = tuple(allowed)
        self.allow_zone_ids = allow_zone_ids
        # host -> refusal (or None): the check runs on every request, so remember it.
        self._verdicts: dict[str, FetchError | None] = {}

    def is_allowed(self, addr: IPAddress) -> bool:
        """True if ``addr`` (without regard to any zone id) may be connected to."""
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
            addr = ipaddress.IPv6Address(addr.packed)  # judge the address, not its zone
        if any(addr.version == n.version and addr in n for n in self.allowed):
            return True
        if isinstance(addr, ipaddress.IPv6Address):
            inner = embedded_ipv4(addr)
            if inner is not None:
                return self.is_allowed(inner)
        if any(addr.version == n.version and addr in n for n in _BLOCKED):
            return False
        return addr.is_global

    def check(self, host: str) -> None:
        """Raise `BlockedError` or `InvalidURLError` unless ``host`` (a URL's raw host: an IP
        literal, bracketed or not, or a name) may be requested. Names pass here; what they
        resolve to is judged by the resolver and the socket factory."""
        try:
            refusal = self._verdicts[host]
        except KeyError:
            refusal = self._judge(host)
            if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[host] = refusal
        if refusal is not None:
            raise type(refusal)(refusal.detail)

    def _judge(self, host: str) -> FetchError | None:
        problem = host_problem(host)
        if problem is not None:
            return InvalidURLError(problem)
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if ":" in literal:
            addr = ipaddress.IPv6Address(unquote(literal))  # yarl keeps "%" as "%25"
            if addr.scope_id is not None and not self.allow_zone_ids:
                return BlockedError(
                    f"IPv6 zone ids are refused ([{literal}]; see HARVESTER_ALLOW_IPV6_ZONE_IDS)"
                )
            return self._verdict(addr)
        if literal.rstrip(".").replace(".", "").isdigit():
            # All digits and dots, and canonical (host_problem refused legacy forms such as
            # 2130706433 or 127.1 that some resolvers map onto an address).
            return self._verdict(ipaddress.IPv4Address(literal.rstrip(".")))
        return None  # a name: judged on what it resolves to, and at connect

    def _verdict(self, addr: IPAddress) -> FetchError | None:
        if self.is_allowed(addr):
            return None
        return BlockedError(f"address {addr} is not allowed (see HARVESTER_ALLOWED_NETWORKS)")

    def check_sockaddr(self, family: int, host: str) -> None:
        """Raise `BlockedAddressError` unless a socket of ``family`` may connect to ``host``,
        read as the kernel will read it (numeric only, zone id included)."""
        try:
            infos = socket.getaddrinfo(
                host, None, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
            )
        except (OSError, UnicodeError) as exc:
            raise BlockedAddressError(f"refused to connect to {host!r}: not an address") from exc
        for *_, sockaddr in infos:
            addr = ipaddress.ip_address(sockaddr[0])
            zone = sockaddr[3] if len(sockaddr) > 3 else 0
            if zone and not self.allow_zone_ids:
                raise BlockedAddressError(f"refused to connect to {host!r}: IPv6 zone id")
            if not self.is_allowed(addr):
                raise BlockedAddressError(f"refused to connect to {addr}: address not allowed")


class ProxyEndpoints:
    """The operator's forward proxies (host, port), which the connector may reach whatever
    their address: names as configured, and the addresses those names resolved to."""

    def __init__(self, endpoints: Iterable[tuple[str, int]]) -> None:
        self._names = frozenset((host.strip("[]").lower(), port) for host, port in endpoints)
        self._addresses = {(h, p) for h, p in self._names if _is_address(h)}

    def is_proxy(self, host: str, port: int) -> bool:
        """Whether ``host`` (as the connector resolves it) and ``port`` name a proxy."""
        return (host.lower(), port) in self._names

    def remember(self, results: Iterable[ResolveResult]) -> None:
        """Note the addresses a proxy's name resolved to, for the socket factory."""
        self._addresses.update((r["host"], r["port"]) for r in results)

    def is_proxy_address(self, address: str, port: int) -> bool:
        """Whether a socket to ``address``:``port`` is a connection to a proxy."""
        return (address, port) in self._addresses


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def guarded_socket_factory(
    policy: AddressPolicy, proxies: ProxyEndpoints | None = None
) -> Callable[[AddrInfo], socket.socket]:
    """A socket factory for aiohttp's connector that judges every address before a socket for
    it exists (aiohttp calls it for each address it is about to connect to). A socket to one of
    ``proxies`` passes: the proxy's target was judged by `TargetCheck`."""

    def factory(addr_info: AddrInfo) -> socket.socket:
        family, type_, proto, _, address = addr_info
        if proxies is None or not proxies.is_proxy_address(address[0], address[1]):
            policy.check_sockaddr(family, address[0])
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


Lookup = Callable[[str], Awaitable[list[str]]]


async def lookup(host: str) -> list[str]:
    """Every address ``host`` resolves to (both families), as the system resolver answers."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class TargetCheck:
    """Judges the target of a request that goes through a proxy, which will resolve and connect
    to it out of the connector's sight: a name is resolved here, and refused if ANY of its
    addresses is refused (the proxy may connect to any of them). Verdicts are kept for
    `TARGET_VERDICT_TTL` seconds, except a lookup that failed for now (a transient
    `ConnectError`), which the next attempt repeats."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolve: Lookup = lookup,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy = policy
        self._resolve = resolve
        self._clock = clock
        self._verdicts: dict[str, tuple[float, FetchError | None]] = {}

    async def check(self, host: str) -> None:
        """Raise `BlockedError`, `InvalidURLError` or `ConnectError` (lookup failed) unless
        ``host`` (a URL's raw host) may be requested through a proxy."""
        self._policy.check(host)  # literals and malformed hosts, as for a direct request
        cached = self._verdicts.get(host)
        now = self._clock()
        if cached is not None and cached[0] > now:
            refusal = cached[1]
        else:
            refusal = await self._judge(host)
            # A lookup that failed for now is asked again on the next attempt, never cached.
            if refusal is None or not refusal.transient:
                if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                    self._verdicts.clear()
                self._verdicts[host] = (now + TARGET_VERDICT_TTL, refusal)
        if refusal is not None:
            raise type(refusal)(refusal.detail, transient=refusal.transient)

    async def _judge(self, host: str) -> FetchError | None:
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if _is_address(unquote(literal)):
            return None  # an address literal: AddressPolicy.check has judged it
        try:
            addresses = await self._resolve(host.rstrip("."))
        except socket.gaierror as exc:
            gone = exc.errno in PERMANENT_DNS_ERRORS
            return ConnectError(f"DNS lookup failed: {exc}", transient=not gone)
        except (OSError, UnicodeError) as exc:
            return ConnectError(f"DNS lookup failed: {exc}")
        refused = sorted({a for a in addresses if not _allowed_address(self._policy, a)})
        if refused or not addresses:
            return BlockedError(
                f"{host} resolves to addresses that are not allowed ({', '.join(refused)})"
            )
        return None


def _allowed_address(policy: AddressPolicy, host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # not an address at all: never connect to it
    zoned = isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None
    if zoned and not policy.allow_zone_ids:
        return False
    return policy.is_allowed(addr)


class GuardedResolver(AbstractResolver):
    """Wraps a resolver and drops every address the policy refuses.

    If nothing is left, raises `BlockedError`, so no connection is ever opened to the target.
    """

    def __init__(
        self,
        inner: AbstractResolver,
        policy: AddressPolicy,
        proxies: ProxyEndpoints | None = None,
    ) -> None:
        self._inner = inner
        self._policy = policy
        self._proxies = proxies

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._proxies is not None and self._proxies.is_proxy(host, port):
            self._proxies.remember(results)  # the operator's proxy, wherever it is
            return results
        kept = [r for r in results if _allowed_address(self._policy, r["host"])]
        if not kept:
            addrs = ", ".join(sorted({r["host"] for r in results}))
            raise BlockedError(f"{host} resolves only to addresses that are not allowed ({addrs})")
        return kept

    async def close(self) -> None:
        await self._inner.close()
