"""The SSRF address policy."""

from __future__ import annotations

import ipaddress

import pytest

from worker.errors import BlockedError
from worker.guard import AddressPolicy


@pytest.mark.parametrize(
    "addr",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",
        "64:ff9b::a00:1",
    ],
)
def test_private_and_special_addresses_are_refused(addr: str) -> None:
    """Loopback, private, link-local, CGNAT, multicast, reserved and embedded-IPv4 forms."""
    assert not AddressPolicy().is_allowed(ipaddress.ip_address(addr))


@pytest.mark.parametrize("addr", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(addr: str) -> None:
    """Global unicast addresses pass."""
    assert AddressPolicy().is_allowed(ipaddress.ip_address(addr))


def test_allowed_networks_open_chosen_ranges() -> None:
    """HARVESTER_ALLOWED_NETWORKS opens a range, and only that range."""
    policy = AddressPolicy([ipaddress.ip_network("127.0.0.0/8")])
    assert policy.is_allowed(ipaddress.ip_address("127.0.0.1"))
    assert policy.is_allowed(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert not policy.is_allowed(ipaddress.ip_address("10.0.0.1"))


def test_check_refuses_ip_literals_but_defers_names() -> None:
    """Literals are judged at once; names are judged on what they resolve to."""
    policy = AddressPolicy()
    with pytest.raises(BlockedError):
        policy.check("169.254.169.254")
    with pytest.raises(BlockedError):
        policy.check("[::1]")
    policy.check("example.com")


class _StubResolver:
    """Stands in for DNS: answers with fixed addresses (a rebinding attacker's view of DNS)."""

    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict]:
        return [
            {"hostname": host, "host": a, "port": port, "family": 0, "proto": 0, "flags": 0}
            for a in self.addrs
        ]

    async def close(self) -> None:
        return None


async def test_resolver_drops_refused_addresses_and_keeps_the_rest() -> None:
    """A name resolving to public and private addresses is connected only to the public one."""
    from worker.guard import GuardedResolver

    resolver = GuardedResolver(_StubResolver(["10.0.0.5", "93.184.216.34"]), AddressPolicy())  # type: ignore[arg-type]
    kept = await resolver.resolve("api.example.com", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34"]


async def test_resolver_refuses_a_name_that_resolves_only_inside() -> None:
    """DNS pointing a public-looking name at the metadata address is refused before connecting."""
    from worker.guard import GuardedResolver

    resolver = GuardedResolver(_StubResolver(["169.254.169.254"]), AddressPolicy())  # type: ignore[arg-type]
    with pytest.raises(BlockedError, match="not allowed"):
        await resolver.resolve("rebind.example.com", 80)
