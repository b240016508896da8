"""The SSRF guard: which addresses harvester may connect to, and a resolver that enforces it.

The check runs on the addresses a host name resolves to (so DNS rebinding and odd spellings of
an IP such as ``2130706433`` or ``0x7f.1`` are judged by what they resolve to), and on IP
literals before any connection is made. Redirects are followed by `worker.fetch` hop by hop, so
every hop passes through here too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult

from worker.errors import BlockedError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Ranges refused unless HARVESTER_ALLOWED_NETWORKS opens them. `is_global` covers most of these;
# they are listed so the policy reads plainly and survives changes in the stdlib's tables.
_BLOCKED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network", unspecified
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # CGNAT
        "127.0.0.0/8",  # loopback
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
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
        "2001:db8::/32",  # documentation
        "100::/64",  # discard
    )
)


_VERDICT_CACHE_SIZE = 10_000


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, compatible, 6to4, Teredo, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    packed = addr.packed
    if packed[:12] == bytes(12) and addr != ipaddress.IPv6Address("::1") and int(addr) > 0xFFFF:
        return ipaddress.IPv4Address(packed[12:])  # deprecated IPv4-compatible ::a.b.c.d
    if addr in ipaddress.ip_network("64:ff9b::/96") or addr in ipaddress.ip_network(
        "64:ff9b:1::/48"
    ):
        return ipaddress.IPv4Address(packed[12:])
    return None


class AddressPolicy:
    """Decides whether an IP address may be connected to."""

    def __init__(self, allowed: Sequence[Network] = ()) -> None:
        self.allowed = tuple(allowed)
        # host -> refusal message (or None): the check runs on every request, so remember it.
        self._verdicts: dict[str, str | None] = {}

    def is_allowed(self, addr: IPAddress) -> bool:
        if any(addr.version == n.version and addr in n for n in self.allowed):
            return True
        if isinstance(addr, ipaddress.IPv6Address):
            inner = _embedded_ipv4(addr)
            if inner is not None:
                return self.is_allowed(inner)
        if any(addr.version == n.version and addr in n for n in _BLOCKED):
            return False
        return addr.is_global

    def check(self, host: str) -> None:
        """Raise `BlockedError` if ``host`` is an IP literal that is not allowed."""
        try:
            refusal = self._verdicts[host]
        except KeyError:
            refusal = self._judge(host)
            if len(self._verdicts) >= _VERDICT_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[host] = refusal
        if refusal is not None:
            raise BlockedError(refusal)

    def _judge(self, host: str) -> str | None:
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None  # a name: judged on what it resolves to
        if self.is_allowed(addr):
            return None
        return f"address {addr} is not allowed (see HARVESTER_ALLOWED_NETWORKS)"


class GuardedResolver(AbstractResolver):
    """Wraps a resolver and drops every address the policy refuses.

    If nothing is left, raises `BlockedError`, so no connection is ever opened to the target.
    """

    def __init__(self, inner: AbstractResolver, policy: AddressPolicy) -> None:
        self._inner = inner
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if self._policy.is_allowed(ipaddress.ip_address(r["host"]))]
        if not kept:
            addrs = ", ".join(sorted({r["host"] for r in results}))
            raise BlockedError(f"{host} resolves only to addresses that are not allowed ({addrs})")
        return kept

    async def close(self) -> None:
        await self._inner.close()
