"""Which hosts the fleet's limiter asks Redis about: its rule for a host, from the cached
policies and HARVESTER_HOST_RPS (no Redis is reached)."""

from __future__ import annotations

from collections.abc import Callable

from redis.asyncio import Redis

from worker.engine.pacing import HostPolicy
from worker.queue.hostlimits import RedisHostLimiter
from worker.settings import Settings


def test_a_host_rule_comes_from_its_policy_or_the_default(
    make_settings: Callable[..., Settings],
) -> None:
    """A policy's rate and limit win; its missing rate is the default; rate 0 and no limit is
    no rule at all (the host pays no Redis round trip)."""
    limiter = RedisHostLimiter(Redis.from_url("redis://127.0.0.1:9/0"), make_settings(host_rps=4))
    limiter._policies = {
        "a.example": HostPolicy(10.0, 2),
        "b.example": HostPolicy(None, 3),
        "c.example": HostPolicy(0.0, None),
    }
    assert limiter.rule("a.example") == (100.0, 2)
    assert limiter.rule("b.example") == (250.0, 3)
    assert limiter.rule("c.example") is None
    assert limiter.rule("other.example") == (250.0, 0)
    unpaced = RedisHostLimiter(Redis.from_url("redis://127.0.0.1:9/0"), make_settings())
    assert unpaced.rule("other.example") is None


def test_a_host_is_free_without_a_rule_or_a_pause(make_settings: Callable[..., Settings]) -> None:
    """`free` (the fetcher then skips `wait`) only for a host with no rule and no pause here."""
    limiter = RedisHostLimiter(Redis.from_url("redis://127.0.0.1:9/0"), make_settings())
    limiter._policies = {"a.example": HostPolicy(None, 2)}
    limiter._paused = {"b.example": 1e12}
    assert limiter.free("other.example")
    assert not limiter.free("a.example")  # an in-flight limit
    assert not limiter.free("b.example")  # paused
    paced = RedisHostLimiter(Redis.from_url("redis://127.0.0.1:9/0"), make_settings(host_rps=4))
    assert not paced.free("other.example")
