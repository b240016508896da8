"""Spellings of refused addresses, for the SSRF tests: every form we know an attacker can write.

`ipv4_hosts` spells an IPv4 address the ways URL parsers, resolvers and socket libraries have
been known to accept (decimal, octal, hex, short and mixed forms, IPv6 forms that carry it);
`ipv6_hosts` spells an IPv6 address with and without zone ids (empty, named, numeric) and
percent-encoded brackets. Each host is ready to put between ``http://`` and ``:port``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools

ZONES = ("", "%25", "%25eth0", "%251", "%25lo", "%2525", "%25%00")


def _v4_forms(addr: ipaddress.IPv4Address) -> list[str]:
    a, b, c, d = addr.packed
    n = int(addr)
    return [
        str(addr),
        f"{addr}.",
        str(n),
        hex(n),
        hex(n).upper().replace("X", "x"),
        oct(n).replace("0o", "0"),
        f"{a}.{b}.{(c << 8) | d}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        ".".join(hex(x) for x in (a, b, c, d)),
        ".".join(f"0{x:o}" for x in (a, b, c, d)),
        f"0{a:o}.{b}.{hex(c)}.{d}",
        f"{a:04d}.{b:03d}.{c:03d}.{d:03d}",
    ]


def _v6_carriers(addr: ipaddress.IPv4Address) -> list[str]:
    """IPv6 addresses that embed ``addr``: mapped, translated (SIIT), compatible, NAT64,
    6to4 and Teredo."""
    hi, lo = int(addr) >> 16, int(addr) & 0xFFFF
    teredo = ipaddress.IPv6Address((0x20010000 << 96) | ((~int(addr)) & 0xFFFFFFFF))
    return [
        f"::ffff:{addr}",
        f"::ffff:{hi:x}:{lo:x}",
        f"::FFFF:{hi:X}:{lo:X}",
        f"0:0:0:0:0:ffff:{addr}",
        f"::ffff:0:{addr}",
        f"::ffff:0:{hi:x}:{lo:x}",
        f"::{addr}",
        f"64:ff9b::{addr}",
        f"64:ff9b:1::{hi:x}:{lo:x}",
        f"2002:{hi:x}:{lo:x}::",
        str(teredo),
    ]


def ipv6_hosts(addr: str) -> list[str]:
    """``[addr]`` with every zone id, and with percent-encoded brackets."""
    hosts = [f"[{addr}{zone}]" for zone in ZONES]
    hosts += [f"%5B{addr}%5D", f"%5b{addr}%25%5d"]
    return hosts


def ipv4_hosts(addr: str) -> list[str]:
    """Every spelling of the IPv4 ``addr`` as a URL host, IPv6 carriers included."""
    v4 = ipaddress.IPv4Address(addr)
    carriers = _v6_carriers(v4)
    return list(
        dict.fromkeys(
            itertools.chain(
                _v4_forms(v4), *(ipv6_hosts(c) for c in carriers), (f"user@{v4}", f"u:p@{v4}")
            )
        )
    )


def refused_hosts(loopback: str = "127.0.0.2") -> list[str]:
    """Hosts that must all be refused: ``loopback`` (where a test's trap listens), ``::1``,
    cloud metadata (IPv4 and IPv6), a private, a site-local and an Azure host-local address."""
    hosts = ipv4_hosts(loopback)
    hosts += ipv6_hosts("::1") + ipv6_hosts("0:0:0:0:0:0:0:1")
    hosts += ipv4_hosts("169.254.169.254") + ipv6_hosts("fd00:ec2::254")
    hosts += ipv4_hosts("10.0.0.1") + ipv4_hosts("168.63.129.16")
    hosts += ipv6_hosts("fec0::1") + ipv6_hosts("fe80::1")
    return list(dict.fromkeys(hosts))


class Trap:
    """Listens on 127.0.0.2 and [::1] on one port and counts every TCP connection it gets.

    Nothing must ever connect to it: its addresses are refused by the SSRF policy under test.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        for _ in range(20):  # the port that is free on 127.0.0.2 may be taken on ::1
            v4 = await asyncio.start_server(self._handle, "127.0.0.2", 0)
            port = v4.sockets[0].getsockname()[1]
            try:
                v6 = await asyncio.start_server(self._handle, "::1", port)
            except OSError:
                v4.close()
                await v4.wait_closed()
                continue
            self._servers = [v4, v6]
            self.port = port
            return
        raise RuntimeError("no port free on both 127.0.0.2 and ::1")

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{"trap": "!"}')
        await writer.drain()
        writer.close()
