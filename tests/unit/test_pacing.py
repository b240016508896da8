"""HostPacer: per-host spacing of request starts and host-wide pauses, on a fake clock; host
policies and host names, as `harvester hosts` takes them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest

from worker.engine import pacing
from worker.engine.fetch import Fetcher
from worker.engine.pacing import (
    MAX_CONCURRENCY,
    MAX_RPS,
    MIN_RPS,
    HostPacer,
    HostPolicy,
    Ticket,
    host_key,
)
from worker.engine.session import create_session
from worker.settings import Settings


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_requests_to_a_host_are_spaced_by_the_rate() -> None:
    """At 4 requests/s, the fifth request to a host starts a second after the first."""
    t = FakeTime()
    pacer = HostPacer(4.0, clock=t.clock, sleep=t.sleep)
    starts = []
    for _ in range(5):
        await pacer.wait("a.example")
        starts.append(t.now)
    assert [round(s - starts[0], 3) for s in starts] == [0, 0.25, 0.5, 0.75, 1.0]


async def test_hosts_are_paced_independently() -> None:
    """A busy host does not delay another."""
    t = FakeTime()
    pacer = HostPacer(1.0, clock=t.clock, sleep=t.sleep)
    await pacer.wait("a.example")
    await pacer.wait("b.example")
    assert t.sleeps == []


async def test_a_pause_holds_every_request_to_that_host() -> None:
    """After pause(host, 5), requests to the host wait 5 s; other hosts go at once."""
    t = FakeTime()
    pacer = HostPacer(clock=t.clock, sleep=t.sleep)
    pacer.hold("a.example", 5)
    await pacer.wait("b.example")
    assert t.sleeps == []
    await pacer.wait("a.example")
    assert t.sleeps == [5]
    await pacer.wait("a.example")  # the pause is over
    assert t.sleeps == [5]


async def test_a_host_is_free_only_without_a_rate_or_any_pause() -> None:
    """`free` (the fetcher then skips `wait`): no rate set and no host paused."""
    t = FakeTime()
    assert HostPacer(clock=t.clock, sleep=t.sleep).free("a.example")
    assert not HostPacer(4.0, clock=t.clock, sleep=t.sleep).free("a.example")
    paused = HostPacer(clock=t.clock, sleep=t.sleep)
    paused.hold("b.example", 5)
    assert not paused.free("a.example")


async def test_a_pause_is_capped() -> None:
    """A hostile Retry-After cannot park a host for longer than the cap."""
    t = FakeTime()
    pacer = HostPacer(pause_cap=30, clock=t.clock, sleep=t.sleep)
    pacer.hold("a.example", 10**9)
    assert pacer.paused_for("a.example") == 30


async def test_a_pause_begun_while_waiting_is_honoured() -> None:
    """A request already waiting for its pacing slot also waits out a pause that starts meanwhile."""
    pacer = HostPacer(10.0, pause_cap=60)
    await pacer.wait("a.example")
    loop = asyncio.get_running_loop()
    waiter = asyncio.ensure_future(pacer.wait("a.example"))  # its slot is 0.1 s away
    pacer.hold("a.example", 0.3)
    started = loop.time()
    await waiter
    assert loop.time() - started >= 0.25


async def test_no_rate_and_no_pause_never_touches_the_clock() -> None:
    """Without pacing configured, wait() is free."""

    def clock() -> float:
        raise AssertionError("clock read")

    pacer = HostPacer(clock=clock)
    await pacer.wait("a.example")


async def test_cancelled_waiters_book_nothing() -> None:
    """Fifty waiters cancelled in line (their jobs hit a deadline) do not push back the next
    request: it starts one interval after the last request that did start."""
    pacer = HostPacer(10.0)
    await pacer.wait("a.example")
    waiters = [asyncio.ensure_future(pacer.wait("a.example")) for _ in range(50)]
    await asyncio.sleep(0)
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pacer.wait("a.example")
    assert loop.time() - started < 0.5  # 50 booked slots would have been 5 s


def test_a_policy_refuses_what_no_host_can_have() -> None:
    """Negative, infinite, NaN or vanishing rates and in-flight limits under 1 are refused,
    saying which; the slowest rate allowed is accepted."""
    for bad in (-1.0, math.inf, math.nan, MAX_RPS * 2, 1e-15, MIN_RPS / 2):
        with pytest.raises(ValueError, match="rps must be"):
            HostPolicy(rps=bad)
        with pytest.raises(ValueError, match="rps must be"):
            HostPolicy.from_dict({"rps": bad})
    assert HostPolicy(rps=MIN_RPS).rps == MIN_RPS
    for bad_n in (0, -3, MAX_CONCURRENCY + 1):
        with pytest.raises(ValueError, match="concurrency must be"):
            HostPolicy(concurrency=bad_n)
    assert HostPolicy(rps=0.0).rps == 0.0  # not paced: allowed


def test_a_policy_change_keeps_what_it_does_not_give() -> None:
    """Setting the in-flight limit keeps the rate, and the other way round."""
    assert HostPolicy(5.0, None).merged(HostPolicy(None, 4)) == HostPolicy(5.0, 4)
    assert HostPolicy(5.0, 4).merged(HostPolicy(2.0, None)) == HostPolicy(2.0, 4)


def test_a_stored_policy_reads_back_and_junk_is_refused() -> None:
    """from_dict(as_dict()) is the policy; a stored value of the wrong shape is an error."""
    policy = HostPolicy(2.5, 3)
    assert HostPolicy.from_dict(policy.as_dict()) == policy
    for junk in ([], {"rps": "5"}, {"rps": True}, {"concurrency": 1.5}, {"rps": -2}):
        with pytest.raises((ValueError, TypeError)):
            HostPolicy.from_dict(junk)


def test_host_names_are_keyed_as_the_fetcher_keys_them() -> None:
    """Lower case, IDNA decoded, IPv6 without brackets; URLs, ports and paths are refused."""
    assert host_key("API.Example.COM") == "api.example.com"
    assert host_key("xn--bcher-kva.example") == "bücher.example"
    assert host_key("[::1]") == "::1"
    assert host_key("10.0.0.1") == "10.0.0.1"
    assert host_key("API.Example.COM.") == "api.example.com"  # the root's dot: the same host
    for bad in (
        "",
        ".",
        " api.example.com",
        "https://api.example.com",
        "api.example.com:8443",
        "api.example.com/x",
        "user@api.example.com",
        "a b",
    ):
        with pytest.raises(ValueError, match="is not a host name"):
            host_key(bad)


class _Asked(Exception):
    """Raised by `_Recorder`: the request goes no further than asking for its turn."""


class _Recorder:
    """A `HostLimiter` that notes the host it is asked about and stops the request there."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    def free(self, host: str) -> bool:
        return False  # every request asks `wait`

    async def wait(self, host: str, *, in_slot: bool = False) -> Ticket | None:
        self.hosts.append(host)
        raise _Asked

    async def pause(self, host: str, seconds: float) -> None:
        self.hosts.append(host)


async def test_the_fetcher_asks_for_a_host_without_its_trailing_dot(
    make_settings: Callable[..., Settings],
) -> None:
    """``http://API.example.com./x`` is paced as ``api.example.com``, the host a policy names
    (a trailing dot does not slip past the host's policy)."""
    settings = make_settings()
    session = create_session(settings)
    recorder = _Recorder()
    try:
        fetcher = Fetcher(session, settings, limiter=recorder)
        with pytest.raises(_Asked):
            await fetcher.fetch("http://API.example.com./x")
    finally:
        await session.close()
    assert recorder.hosts == ["api.example.com"]


async def test_host_lines_forget_only_lines_nobody_is_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """One lock per host; past PRUNE_AT hosts, idle lines go and a held one stays the same."""
    monkeypatch.setattr(pacing, "PRUNE_AT", 3)
    lines = pacing.HostLines()
    held = lines.line("busy")
    assert lines.line("busy") is held
    await held.acquire()
    idle = lines.line("idle")
    for host in ("a", "b", "c"):
        lines.line(host)
    assert lines.line("busy") is held  # kept through the prune: someone is in it
    assert lines.line("idle") is not idle  # forgotten, then made anew
    held.release()
