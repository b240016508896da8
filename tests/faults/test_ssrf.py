"""SSRF: no spelling of a refused address reaches it, and the target sees no connection."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from tests.hostile import Hostile
from worker.fetch import Failed, Fetcher
from worker.settings import Settings

pytestmark = pytest.mark.faults


@pytest.fixture
async def target() -> AsyncIterator[Hostile]:
    server = Hostile()  # counts TCP connections, not just requests
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_no_spelling_of_loopback_gets_a_connection(
    target: Hostile,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Decimal, hex, octal, short, IPv4-mapped and named forms of 127.0.0.1 are all refused."""
    port = target.base.rsplit(":", 1)[1]
    spellings = [
        f"http://127.0.0.1:{port}/",
        f"http://2130706433:{port}/",
        f"http://0x7f000001:{port}/",
        f"http://0x7f.0.0.1:{port}/",
        f"http://017700000001:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://127.1:{port}/",
        f"http://127.0.0.1.:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://[::ffff:7f00:1]:{port}/",
        f"http://localhost:{port}/",
        f"http://user@127.0.0.1:{port}/",
    ]
    fetcher = make_fetcher(make_settings(allowed_networks=""))
    for url in spellings:
        out = await fetcher.fetch(url)
        assert isinstance(out, Failed), url
        assert out.kind in ("blocked", "invalid_url"), (url, out)
    assert target.connections == 0


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
