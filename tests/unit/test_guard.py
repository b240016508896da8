"""The SSRF address policy."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from worker.engine.guard import AddressPolicy, BlockedAddressError
from worker.errors import BlockedError, FetchError


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
        "::ffff:0:127.0.0.1",
        "::ffff:0:a9fe:a9fe",
        "fec0::1",
        "168.63.129.16",
        "fd00:ec2::254",
        "::ffff:127.0.0.1%25",
        "fe80::1%eth0",
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


@pytest.mark.parametrize(
    ("host", "kind"),
    [
        ("::ffff:7f00:1%25", "invalid_url"),  # an empty zone id: not an address at all
        ("[::1%25]", "invalid_url"),
        ("::1%25lo", "blocked"),  # a zone id, refused whatever the address
        ("2606:4700::1111%25eth0", "blocked"),
        ("::ffff:0:7f00:1", "blocked"),  # IPv4-translated 127.0.0.1
        ("2130706433", "invalid_url"),  # legacy IPv4 forms are not canonical addresses
        ("127.1", "invalid_url"),
        ("0177.0.0.1", "invalid_url"),
        ("exa mple.com", "invalid_url"),
        ("a..b", "invalid_url"),
        ("%5B::1%5D", "invalid_url"),
        ("-leading.example", "invalid_url"),
    ],
)
def test_hosts_that_are_neither_a_name_nor_an_allowed_address_are_refused(
    host: str, kind: str
) -> None:
    """Malformed literals and non-names are refused outright, never left to the resolver."""
    with pytest.raises(FetchError) as caught:
        AddressPolicy().check(host)
    assert caught.value.kind == kind


def test_zone_ids_pass_only_when_allowed_and_the_address_is_allowed() -> None:
    """HARVESTER_ALLOW_IPV6_ZONE_IDS lets a zone id through, but the address is still judged."""
    open_policy = AddressPolicy([ipaddress.ip_network("fe80::/10")], allow_zone_ids=True)
    open_policy.check("fe80::1%25eth0")
    with pytest.raises(BlockedError):
        AddressPolicy(allow_zone_ids=True).check("fe80::1%25eth0")


@pytest.mark.parametrize(
    "host", ["::ffff:7f00:1%25", "::1", "127.0.0.1", "169.254.169.254", "fe80::1%1"]
)
def test_sockaddr_check_reads_the_address_as_the_kernel_will(host: str) -> None:
    """What a socket is about to connect to is parsed numerically, zone included, and judged."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with pytest.raises(BlockedAddressError):
        AddressPolicy().check_sockaddr(family, host)
    AddressPolicy().check_sockaddr(socket.AF_INET, "93.184.216.34")


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
    from worker.engine.guard import GuardedResolver

    resolver = GuardedResolver(_StubResolver(["10.0.0.5", "93.184.216.34"]), AddressPolicy())  # type: ignore[arg-type]
    kept = await resolver.resolve("api.example.com", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34"]


async def test_resolver_refuses_a_name_that_resolves_only_inside() -> None:
    """DNS pointing a public-looking name at the metadata address is refused before connecting."""
    from worker.engine.guard import GuardedResolver

    resolver = GuardedResolver(_StubResolver(["169.254.169.254"]), AddressPolicy())  # type: ignore[arg-type]
    with pytest.raises(BlockedError, match="not allowed"):
        await resolver.resolve("rebind.example.com", 80)
