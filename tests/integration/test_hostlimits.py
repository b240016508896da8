"""The fleet's host limiter against the session's Valkey: two limiters on one Redis stand for two
workers (the three-process run is in tests/faults/test_fleet_limits.py)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as aioredis

from tests.helpers import TEST_QUEUE, wait_until
from tests.helpers.upstream import Upstream
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import Fetched
from worker.engine.pacing import HostPolicy
from worker.engine.session import create_session
from worker.queue.hostlimits import (
    RedisHostLimiter,
    host_keys,
    paused_key,
    read_pauses,
    set_policy,
)
from worker.settings import Settings

Limiters = Callable[..., Awaitable[RedisHostLimiter]]


@pytest.fixture
async def limiters(
    redis: aioredis.Redis, make_settings: Callable[..., Settings]
) -> AsyncIterator[Limiters]:
    """Started limiters ("workers") on the flushed Redis; ``await factory(**settings)``."""
    stack = AsyncExitStack()

    async def factory(lease_s: float | None = None, **overrides: object) -> RedisHostLimiter:
        limiter = RedisHostLimiter(redis, make_settings(**overrides), lease_s=lease_s)
        await limiter.start()
        stack.push_async_callback(limiter.stop)
        return limiter

    async with stack:
        yield factory


async def _turn(limiter: RedisHostLimiter, host: str, *, keep: bool = False) -> float:
    """Take a turn for ``host``; when it came (given back at once unless ``keep``)."""
    ticket = await limiter.wait(host)
    assert ticket is not None
    release = await ticket.take()
    at = time.monotonic()
    if release is not None and not keep:
        await release()
    return at


async def test_two_workers_share_one_rate(redis: aioredis.Redis, limiters: Limiters) -> None:
    """A host at 20 requests/s: twenty turns asked by two limiters at once come 50 ms apart."""
    await set_policy(redis, TEST_QUEUE, "a.example", HostPolicy(rps=20))
    a, b = await limiters(), await limiters()
    times = sorted(
        await asyncio.gather(
            *(_turn(w, "a.example") for w in itertools.islice(itertools.cycle((a, b)), 20))
        )
    )
    # Each turn is stamped once the loop gets to it: a stall on one shortens the next gap, so
    # each gap is held to half the spacing (unpaced turns would come together) and the span to
    # the whole of it.
    gaps = [y - x for x, y in itertools.pairwise(times)]
    assert min(gaps) >= 0.025, gaps
    assert times[-1] - times[0] >= 19 * 0.05 * 0.95


async def test_the_default_rate_holds_for_the_fleet(limiters: Limiters) -> None:
    """HARVESTER_HOST_RPS applies to every host without a policy, across workers too."""
    a, b = await limiters(host_rps=10), await limiters(host_rps=10)
    times = sorted(await asyncio.gather(*(_turn(w, "b.example") for w in (a, b, a, b))))
    assert min(y - x for x, y in itertools.pairwise(times)) >= 0.05  # see the test above
    assert times[-1] - times[0] >= 3 * 0.1 * 0.95


async def test_in_flight_limit_holds_across_workers(
    redis: aioredis.Redis, limiters: Limiters
) -> None:
    """A host limited to 2 in flight: a third request, from another worker, waits until one of
    the two is answered."""
    await set_policy(redis, TEST_QUEUE, "c.example", HostPolicy(concurrency=2))
    a, b = await limiters(), await limiters()
    held = []
    for _ in range(2):
        ticket = await a.wait("c.example")
        assert ticket is not None
        held.append(await ticket.take())
    third = asyncio.create_task(_turn(b, "c.example"))
    done, _ = await asyncio.wait({third}, timeout=0.3)
    assert not done  # still waiting with two in flight
    release = held.pop()
    assert release is not None
    await release()
    await asyncio.wait_for(third, 5)


async def test_a_dead_workers_slots_free_themselves(
    redis: aioredis.Redis, limiters: Limiters
) -> None:
    """A slot never given back (its worker died) expires with its lease."""
    await set_policy(redis, TEST_QUEUE, "d.example", HostPolicy(concurrency=1))
    dead, alive = await limiters(lease_s=0.5), await limiters(lease_s=0.5)
    taken = await _turn(dead, "d.example", keep=True)
    came = await asyncio.wait_for(_turn(alive, "d.example"), 5)
    assert came - taken >= 0.4


async def test_a_pause_reaches_every_worker(redis: aioredis.Redis, limiters: Limiters) -> None:
    """A pause one worker records holds a limited host back for another at once, and an
    unlimited host once the other has read the pauses (every few seconds); it is capped."""
    await set_policy(redis, TEST_QUEUE, "e.example", HostPolicy(rps=1000))
    a, b = await limiters(retry_after_cap=1.5), await limiters(retry_after_cap=1.5)
    paused_at = time.monotonic()  # before both pauses begin: the waits are timed from here
    await a.pause("e.example", 1.0)
    await a.pause("f.example", 3600)  # a hostile Retry-After

    async def shared() -> bool:
        return set(await read_pauses(redis, TEST_QUEUE)) == {"e.example", "f.example"}

    await wait_until(shared, timeout=5)
    assert (await read_pauses(redis, TEST_QUEUE))["f.example"] <= 1.5
    assert await _turn(b, "e.example") - paused_at >= 0.95
    await b.refresh()
    assert await b.wait("f.example") is None  # not limited: no ticket, but it waited
    assert time.monotonic() - paused_at >= 1.45  # the cap, not the hour asked for


async def test_unlimited_hosts_pay_no_redis_round_trip(
    redis: aioredis.Redis, limiters: Limiters
) -> None:
    """With no limit for a host (others may have one), asking for it sends Redis nothing."""
    await set_policy(redis, TEST_QUEUE, "limited.example", HostPolicy(rps=5))
    limiter = await limiters()
    before = (await redis.info("stats"))["total_commands_processed"]
    for _ in range(100):
        assert await limiter.wait("free.example") is None
    after = (await redis.info("stats"))["total_commands_processed"]
    assert after - before <= 1  # the first INFO itself


async def test_a_retry_after_on_one_worker_pauses_the_others(
    redis: aioredis.Redis,
    upstream: Upstream,
    limiters: Limiters,
    make_settings: Callable[..., Settings],
) -> None:
    """A 429 with Retry-After: 1 answered to one worker's fetcher holds another worker's
    request to that host back for that second."""
    await set_policy(redis, TEST_QUEUE, "127.0.0.1", HostPolicy(rps=1000))
    settings = make_settings()
    sessions = [create_session(settings), create_session(settings)]
    try:
        first = Fetcher(sessions[0], settings, limiter=await limiters())
        second = Fetcher(sessions[1], settings, limiter=await limiters())
        asked = asyncio.create_task(first.fetch(upstream.url("/retry-after/k?seconds=1")))

        async def paused() -> bool:
            return "127.0.0.1" in await read_pauses(redis, TEST_QUEUE)

        await wait_until(paused, timeout=5)
        told = upstream.hits_for("/retry-after/k")[0].at
        other = await second.fetch(upstream.url("/json/other-worker"))
        assert isinstance(other, Fetched)
        assert upstream.hits_for("/json/other-worker")[0].at - told >= 0.9
        assert isinstance(await asked, Fetched)
    finally:
        for session in sessions:
            await session.close()


async def test_redirect_hops_are_paced(
    redis: aioredis.Redis,
    upstream: Upstream,
    limiters: Limiters,
    make_settings: Callable[..., Settings],
) -> None:
    """Each hop of a redirect chain waits for its own turn: four hops at 10/s span 0.3 s."""
    await set_policy(redis, TEST_QUEUE, "127.0.0.1", HostPolicy(rps=10))
    settings = make_settings()
    session = create_session(settings)
    try:
        fetcher = Fetcher(session, settings, limiter=await limiters())
        assert isinstance(await fetcher.fetch(upstream.url("/redirect/3")), Fetched)
    finally:
        await session.close()
    times = sorted(h.at for h in upstream.hits)
    assert len(times) == 4, upstream.hits
    assert min(y - x for x, y in itertools.pairwise(times)) >= 0.05  # stamped by the upstream
    assert times[-1] - times[0] >= 3 * 0.1 * 0.95


async def test_redirects_back_to_a_limited_host_never_wait_on_each_other(
    redis: aioredis.Redis,
    upstream: Upstream,
    limiters: Limiters,
    make_settings: Callable[..., Settings],
) -> None:
    """Two slots, six URLs of a limited host that each redirect back to it: a hop in a slot does
    not queue behind a request that waits for a slot, so every URL lands."""
    await set_policy(redis, TEST_QUEUE, "127.0.0.1", HostPolicy(rps=100))
    settings = make_settings(concurrency=2, per_host=2)
    session = create_session(settings)
    try:
        fetcher = Fetcher(session, settings, limiter=await limiters())
        urls = [upstream.url(f"/redirect-to?location=/json/back-{i}") for i in range(6)]
        outcomes = await asyncio.wait_for(asyncio.gather(*map(fetcher.fetch, urls)), 20)
    finally:
        await session.close()
    assert all(isinstance(o, Fetched) for o in outcomes), outcomes


async def test_an_in_flight_limit_holds_at_the_upstream(
    redis: aioredis.Redis,
    upstream: Upstream,
    limiters: Limiters,
    make_settings: Callable[..., Settings],
) -> None:
    """Two workers' fetchers, a host limited to 2 in flight, 8 slow requests at once: the
    upstream never has more than 2 at a time, and every request is answered."""
    await set_policy(redis, TEST_QUEUE, "127.0.0.1", HostPolicy(concurrency=2))
    settings = make_settings()
    sessions = [create_session(settings), create_session(settings)]
    try:
        fetchers = [Fetcher(s, settings, limiter=await limiters()) for s in sessions]
        urls = [upstream.url(f"/slow/f-{i}?delay=0.1") for i in range(8)]
        outcomes = await asyncio.gather(*(fetchers[i % 2].fetch(url) for i, url in enumerate(urls)))
    finally:
        for session in sessions:
            await session.close()
    assert all(isinstance(o, Fetched) for o in outcomes), outcomes
    assert upstream.max_in_flight == 2


async def _wrongtype_errors(redis: aioredis.Redis) -> int:
    """How many commands Redis has refused with WRONGTYPE so far."""
    stats = await redis.info("errorstats")
    return int(stats.get("errorstat_WRONGTYPE", {}).get("count", 0))


async def test_a_redis_error_makes_a_limited_host_wait_never_fail(
    redis: aioredis.Redis,
    upstream: Upstream,
    limiters: Limiters,
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Redis refuses the limiter's script (not a lost connection: a key of the wrong type
    makes every call an error), a request to the limited host waits, said once in the log; once
    Redis answers again it is sent and fetched, never failed."""
    caplog.set_level(logging.INFO, logger="harvester.hosts")
    await set_policy(redis, TEST_QUEUE, "127.0.0.1", HostPolicy(rps=1000))
    tat = host_keys(TEST_QUEUE, "127.0.0.1")[1]
    await redis.hset(tat, "not", "a number")  # type: ignore[misc]
    settings = make_settings()
    session = create_session(settings)
    try:
        fetcher = Fetcher(session, settings, limiter=await limiters())
        refused = await _wrongtype_errors(redis)
        fetched = asyncio.create_task(fetcher.fetch(upstream.url("/json/after-the-error")))

        async def refused_thrice() -> bool:
            return await _wrongtype_errors(redis) >= refused + 3

        await wait_until(refused_thrice, timeout=10)
        assert not fetched.done()
        assert upstream.hits_for("/json/after-the-error") == []
        await redis.delete(tat)
        outcome = await asyncio.wait_for(fetched, 10)
    finally:
        await session.close()
    assert isinstance(outcome, Fetched), outcome
    said = [r.getMessage() for r in caplog.records if r.name == "harvester.hosts"]
    assert said.count("hosts.redis_unavailable") == 1, said
    assert said.count("hosts.redis_recovered") == 1, said


async def test_a_pause_redis_refuses_is_logged_not_raised(
    redis: aioredis.Redis, limiters: Limiters, caplog: pytest.LogCaptureFixture
) -> None:
    """A pause Redis refuses to record (any error, here a key of the wrong type) is said in the
    log; the pause still holds in this worker."""
    limiter = await limiters()
    await redis.set(f"{TEST_QUEUE}:hosts:paused", "not a hash")
    await limiter.pause("g.example", 1.0)

    async def said() -> bool:
        return any(r.getMessage() == "hosts.pause_not_shared" for r in caplog.records)

    await wait_until(said, timeout=5)
    started = time.monotonic()
    assert await limiter.wait("g.example") is None
    assert time.monotonic() - started >= 0.5


async def test_the_paused_hosts_expire_with_their_last_pause(
    redis: aioredis.Redis, limiters: Limiters
) -> None:
    """The hash of paused hosts lives as long as its longest pause, then is gone: no key of the
    limiter outlives what it records."""
    limiter = await limiters()
    paused_at = time.monotonic()
    await limiter.pause("short.example", 0.3)
    await limiter.pause("long.example", 1.2)

    async def both() -> bool:
        return set(await read_pauses(redis, TEST_QUEUE)) == {"short.example", "long.example"}

    await wait_until(both, timeout=5)
    key = paused_key(TEST_QUEUE)
    left_ms = await redis.pttl(key)
    elapsed_ms = (time.monotonic() - paused_at) * 1000
    assert 1200 - elapsed_ms - 50 < left_ms <= 1200  # the longest pause's time, not the shortest

    async def gone() -> bool:
        return not await redis.exists(key)

    await wait_until(gone, timeout=5)
