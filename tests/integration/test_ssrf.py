"""SSRF: no spelling of a refused address reaches a socket, whichever way the URL comes in.

A trap listens on 127.0.0.2 and [::1] and counts TCP connections; the tests open 127.0.0.1/32
(where the upstream, the API and the redirector listen) and refuse everything else, then send
every spelling of refused addresses (tests/spellings.py) through the fetcher, a redirect, a
scheduled source and the HTTP intake. The trap must see no connection at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers.hostile import Hostile
from tests.helpers.spellings import Trap, ipv4_hosts, refused_hosts
from tests.helpers.upstream import Upstream
from worker.engine.fetch import Fetcher
from worker.engine.guard import AddressPolicy, BlockedAddressError, guarded_socket_factory
from worker.engine.outcomes import Failed, Fetched
from worker.engine.session import map_client_error
from worker.ops.api import create_app
from worker.scheduling import polls
from worker.settings import Settings

ONLY_UPSTREAM = "127.0.0.1/32"
REFUSED = ("blocked", "invalid_url")


@pytest.fixture
async def target() -> AsyncIterator[Hostile]:
    server = Hostile()  # counts TCP connections, not just requests
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    t = Trap()
    await t.start()
    try:
        yield t
    finally:
        await t.stop()


def _sample(hosts: list[str], every: int) -> list[str]:
    """Every ``every``-th host, plus every zone-id and bracket form (the bypass that was)."""
    return [h for i, h in enumerate(hosts) if i % every == 0 or "%" in h]


async def test_no_spelling_of_loopback_gets_a_connection(
    target: Hostile,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Decimal, hex, octal, short, IPv4-mapped and named forms of 127.0.0.1 are all refused."""
    port = target.base.rsplit(":", 1)[1]
    spellings = [f"http://{h}:{port}/" for h in ipv4_hosts("127.0.0.1")]
    spellings += [f"http://localhost:{port}/", f"http://user@127.0.0.1:{port}/"]
    fetcher = make_fetcher(make_settings(allowed_networks=""))
    for url in spellings:
        out = await fetcher.fetch(url)
        assert isinstance(out, Failed), url
        assert out.kind in REFUSED, (url, out)
    assert target.connections == 0


async def test_every_spelling_of_a_refused_address_is_refused_before_a_socket(
    trap: Trap,
    upstream: Upstream,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Loopback, metadata, private, site-local and host-local addresses in every spelling
    (zone ids empty or not, percent-encoded brackets, mapped, translated, 6to4, Teredo, NAT64)
    end as blocked or invalid_url, and the trap sees no connection; the open upstream is
    still reached, so the guard is not simply refusing everything."""
    fetcher = make_fetcher(make_settings(allowed_networks=ONLY_UPSTREAM, max_attempts=1))
    hosts = refused_hosts()
    assert len(hosts) > 400
    for host in hosts:
        out = await fetcher.fetch(f"http://{host}:{trap.port}/latest/meta-data/")
        assert isinstance(out, Failed), host
        assert out.kind in REFUSED, (host, out)
    assert isinstance(await fetcher.fetch(upstream.url("/json/open")), Fetched)
    assert trap.connections == 0


async def test_redirects_to_refused_spellings_are_refused(
    trap: Trap,
    upstream: Upstream,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """An allowed upstream redirecting to any refused spelling gets no connection through."""
    fetcher = make_fetcher(make_settings(allowed_networks=ONLY_UPSTREAM, max_attempts=1))
    for host in _sample(refused_hosts(), every=3):
        target = f"http://{host}:{trap.port}/latest/meta-data/"
        out = await fetcher.fetch(upstream.url(f"/redirect-to?location={quote(target, safe='')}"))
        assert isinstance(out, Failed), host
        assert out.kind in (*REFUSED, "redirect"), (host, out)
    assert trap.connections == 0


async def test_the_socket_factory_refuses_what_gets_past_every_other_check(trap: Trap) -> None:
    """With no URL check and no guarded resolver, the socket factory alone stops the empty
    zone id bypass and plain refused literals: no socket connects, and the error maps to
    blocked."""
    policy = AddressPolicy()
    connector = aiohttp.TCPConnector(socket_factory=guarded_socket_factory(policy))
    async with aiohttp.ClientSession(connector=connector) as session:
        for host in ("[::ffff:127.0.0.2%25]", "[::1%25]", "[::ffff:7f00:2%251]", "127.0.0.2"):
            with pytest.raises(aiohttp.ClientConnectorError) as caught:
                async with session.get(f"http://{host}:{trap.port}/"):
                    pass
            assert isinstance(caught.value.os_error, BlockedAddressError), host
            assert map_client_error(caught.value).kind == "blocked"
    assert trap.connections == 0


async def test_source_polls_of_refused_spellings_record_blocked(
    trap: Trap,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> None:
    """Sources registered (in SQL, as any service may) at refused spellings poll as blocked or
    invalid_url failures; the trap sees nothing."""
    urls = [f"http://{h}:{trap.port}/feed" for h in _sample(refused_hosts(), every=7)]
    await pool.execute(
        "INSERT INTO sources (url, name) SELECT u, 'ssrf' FROM unnest($1::text[]) AS u", urls
    )
    settings = make_settings(allowed_networks=ONLY_UPSTREAM)
    await polls.enqueue_due(pool, arq_queue, settings)
    await make_worker(allowed_networks=ONLY_UPSTREAM).main()
    outcomes = await pool.fetch("SELECT url, last_outcome FROM sources")
    assert len(outcomes) == len(urls)
    assert {r["last_outcome"] for r in outcomes} <= set(REFUSED), outcomes
    assert await pool.fetchval("SELECT count(*) FROM documents") == 0
    assert trap.connections == 0


async def test_http_intake_batches_of_refused_spellings_land_as_failures(
    trap: Trap,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    make_worker: Callable[..., Worker],
) -> None:
    """A batch posted to the API with refused spellings is accepted, and the worker records
    every URL as blocked or invalid_url without a connection."""
    urls = [f"http://{h}:{trap.port}/x" for h in _sample(refused_hosts(), every=5)]
    server = TestServer(create_app(make_settings()), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            body = {"urls": urls, "job_id": "ssrf-intake"}
            async with session.post(server.make_url("/batches"), json=body) as r:
                assert r.status == 202, await r.text()
    finally:
        await server.close()
    await make_worker(allowed_networks=ONLY_UPSTREAM).main()
    kinds = await pool.fetch(
        "SELECT error, count(*) AS n FROM fetch_failures WHERE job_id = 'ssrf-intake' GROUP BY 1"
    )
    assert sum(r["n"] for r in kinds) == len(set(urls))
    assert {r["error"] for r in kinds} <= set(REFUSED), kinds
    assert await pool.fetchval("SELECT count(*) FROM documents") == 0
    assert trap.connections == 0


async def test_allowed_networks_open_exactly_the_range_given(
    target: Hostile,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """127.0.0.1/32 opens the target; the same target through ::1 stays refused."""
    port = target.base.rsplit(":", 1)[1]
    fetcher = make_fetcher(make_settings(allowed_networks="127.0.0.1/32"))
    ok = await fetcher.fetch(f"http://127.0.0.1:{port}/json")
    refused = await fetcher.fetch(f"http://[::1]:{port}/json")
    assert not isinstance(ok, Failed)
    assert isinstance(refused, Failed)
    assert refused.kind == "blocked"
    assert target.connections == 1
