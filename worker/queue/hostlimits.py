"""Host policies for the whole fleet: stored in Redis, enforced by every worker that shares it.

Keys (``<queue>`` is HARVESTER_QUEUE, so two deployments on one Redis keep their own):

- ``<queue>:hosts``, a hash: host -> `HostPolicy` (JSON), written by ``harvester hosts``.
- ``<queue>:hosts:paused``, a hash: host -> end of its pause (Redis time, epoch ms); it expires
  when its last pause ends.
- ``<queue>:host:<host>:pause``, a key whose TTL is the host's pause (a 429 or 503 with
  ``Retry-After``, capped by HARVESTER_RETRY_AFTER_CAP).
- ``<queue>:host:<host>:tat``, the host's GCRA "theoretical arrival time" (epoch ms).
- ``<queue>:host:<host>:flight``, a sorted set of the host's requests in flight, each scored
  with its expiry, so the slots of a worker that died free themselves.

`RedisHostLimiter` is the runtime's `HostLimiter`. A host with a rate (its policy's, or
HARVESTER_HOST_RPS) or an in-flight limit costs one script call (`_ACQUIRE`: pause, in-flight
count and GCRA, atomically, on Redis's clock) per request; a waiter in each process asks for the
host at a time. Policies and pauses are read every `REFRESH_S` seconds into the process, so a
host with neither pays no Redis round trip, and a pause another worker sets reaches it within
that time (at once for limited hosts, whose script reads the pause key). While Redis cannot be
reached or refuses the script (any Redis error: READONLY during a failover, BUSY, OOM, a script
error), a limited host waits (fails closed), however long that lasts, said once in the log;
others go on. No Redis error ever fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from worker.engine.pacing import PRUNE_AT, HostLines, HostPolicy, Release, interval
from worker.settings import Settings

log = logging.getLogger("harvester.hosts")

REFRESH_S: Final = 2.0  # how often a worker reads policies and pauses
FULL_POLL_S: Final = 0.025  # a host at its in-flight limit is asked again after this long
DOWN_POLL_S: Final = 0.5  # a limited host's waiter tries Redis again after this long
STOP_WAIT_S: Final = 1.0  # how long stopping waits for slots to be given back
LEASE_SLACK_S: Final = 10.0  # an in-flight slot outlives HARVESTER_REQUEST_TIMEOUT by this
# Whatever Redis does wrong, not only a lost connection: a limited host waits, never fails.
_REDIS_TROUBLE = (RedisError, OSError)

# KEYS: pause, tat, flight. ARGV: interval ms, in-flight limit (0: none), lease id, lease ms.
# Returns 0 (go), a wait in ms (paused, or not the host's turn yet), or -1 (in-flight full).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return paused end
local limit = tonumber(ARGV[2])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= limit then return -1 end
end
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[2]))
  if tat ~= nil and tat > now then return math.ceil(tat - now) end
  redis.call('SET', KEYS[2], string.format('%.3f', now + interval), 'PX',
             math.ceil(interval) + 1000)
end
if limit > 0 then
  local lease = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[3], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease))
end
return 0
"""

# KEYS: pause, paused hash. ARGV: host, pause ms. Extends (never shortens) the host's pause,
# forgets pauses that are over, and has the hash expire when its last pause ends.
_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[2])
if redis.call('PTTL', KEYS[1]) < ms then redis.call('SET', KEYS[1], '1', 'PX', ms) end
local old = tonumber(redis.call('HGET', KEYS[2], ARGV[1]))
if old == nil or old < now + ms then redis.call('HSET', KEYS[2], ARGV[1], now + ms) end
local all = redis.call('HGETALL', KEYS[2])
local last = now + ms
for i = 1, #all, 2 do
  local until_ms = tonumber(all[i + 1])
  if until_ms == nil or until_ms <= now then redis.call('HDEL', KEYS[2], all[i])
  elseif until_ms > last then last = until_ms end
end
redis.call('PEXPIRE', KEYS[2], math.ceil(last - now))
return 1
"""


def policies_key(queue: str) -> str:
    return f"{queue}:hosts"


def paused_key(queue: str) -> str:
    return f"{queue}:hosts:paused"


def host_keys(queue: str, host: str) -> list[str]:
    """The host's pause, GCRA and in-flight keys (`_ACQUIRE`'s KEYS)."""
    return [f"{queue}:host:{host}:{part}" for part in ("pause", "tat", "flight")]


def _decode(raw: dict[bytes, bytes]) -> dict[str, HostPolicy]:
    policies = {}
    for host, value in raw.items():
        try:
            policies[host.decode()] = HostPolicy.from_dict(orjson.loads(value))
        except (ValueError, TypeError):
            log.warning("hosts.bad_policy", extra={"host": host.decode(errors="replace")})
    return policies


async def read_policies(redis: Redis, queue: str) -> dict[str, HostPolicy]:
    """Every host's policy, by host (sorted)."""
    raw = await redis.hgetall(policies_key(queue))  # type: ignore[misc]
    return dict(sorted(_decode(raw).items()))


async def read_pauses(redis: Redis, queue: str) -> dict[str, float]:
    """Seconds left of each host's pause, for the hosts paused now."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(paused_key(queue))
        pipe.time()
        raw, (seconds, micros) = await pipe.execute()
    return _left(raw, seconds * 1000 + micros / 1000)


def _left(raw: dict[bytes, bytes], now_ms: float) -> dict[str, float]:
    left = {}
    for host, until in raw.items():
        with contextlib.suppress(ValueError):
            ms = float(until) - now_ms
            if ms > 0:
                left[host.decode()] = round(ms / 1000, 1)
    return dict(sorted(left.items()))


async def set_policy(redis: Redis, queue: str, host: str, change: HostPolicy) -> HostPolicy:
    """Set what ``change`` gives of ``host``'s policy, keeping the rest; the policy now."""
    key = policies_key(queue)

    async def merge(pipe: Pipeline) -> HostPolicy:
        raw = await pipe.hget(key, host)  # type: ignore[misc]
        old = _decode({host.encode(): raw}).get(host) if raw else None
        policy = (old or HostPolicy()).merged(change)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.hset(key, host, orjson.dumps(policy.as_dict()).decode())
        return policy

    policy: HostPolicy = await redis.transaction(merge, key, value_from_callable=True)
    return policy


async def clear_policies(redis: Redis, queue: str, hosts: list[str] | None) -> int:
    """Remove the policies of ``hosts`` (None: all); how many there were."""
    key = policies_key(queue)
    if hosts is None:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hlen(key)
            pipe.delete(key)
            count, _ = await pipe.execute()
        return int(count)
    return int(await redis.hdel(key, *hosts)) if hosts else 0  # type: ignore[misc]


class _Ticket:
    """This process's place at the head of one limited host's line (`pacing.Ticket`)."""

    __slots__ = ("_host", "_limiter", "_line", "_rule")

    def __init__(
        self,
        limiter: RedisHostLimiter,
        host: str,
        rule: tuple[float, int],
        line: asyncio.Lock | None,
    ) -> None:
        self._limiter = limiter
        self._host = host
        self._rule = rule
        self._line: asyncio.Lock | None = line

    async def take(self) -> Release | None:
        try:
            return await self._limiter._turn(self._host, *self._rule)
        finally:
            self.drop()

    def drop(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            line.release()


class RedisHostLimiter:
    """The fleet's `HostLimiter` (see the module's docstring). ``start`` reads the policies
    and keeps them fresh; ``stop`` ends that and waits for in-flight slots to be given back."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        *,
        refresh_s: float = REFRESH_S,
        lease_s: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._redis = redis
        self._queue = settings.queue
        self._default_ms = interval(settings.host_rps) * 1000
        self._cap_ms = settings.retry_after_cap * 1000
        # How long an in-flight slot outlives a worker that died holding it.
        self._lease_ms = (lease_s or settings.request_timeout + LEASE_SLACK_S) * 1000
        self._refresh_s = refresh_s
        self._sleep = sleep
        self._policies: dict[str, HostPolicy] = {}
        self._paused: dict[str, float] = {}  # host -> end of its pause (time.monotonic)
        self._lines = HostLines()
        self._acquire = redis.register_script(_ACQUIRE)
        self._pause = redis.register_script(_PAUSE)
        self._leases = itertools.count()
        self._me = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._down_since: float | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._refresher = asyncio.create_task(self._keep_fresh(), name="hosts.refresh")

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        # Give slots back and share pauses if Redis answers soon; leases expire anyway.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=STOP_WAIT_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def refresh(self) -> None:
        """Read every policy and pause (one round trip)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(policies_key(self._queue))
            pipe.hgetall(paused_key(self._queue))
            pipe.time()
            policies, paused, (seconds, micros) = await pipe.execute()
        self._policies = _decode(policies)
        now = time.monotonic()
        left = _left(paused, seconds * 1000 + micros / 1000)
        mine = {h: t for h, t in self._paused.items() if t > now}
        for host, seconds_left in left.items():
            mine[host] = max(mine.get(host, 0.0), now + seconds_left)
        self._paused = mine

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except _REDIS_TROUBLE as exc:  # kept: the policies and pauses last read
                log.warning("hosts.refresh_failed", extra={"error": repr(exc)})

    def rule(self, host: str) -> tuple[float, int] | None:
        """(ms between requests, in-flight limit) for ``host``; None when it has neither."""
        policy = self._policies.get(host)
        if policy is None:
            return (self._default_ms, 0) if self._default_ms else None
        gap = self._default_ms if policy.rps is None else interval(policy.rps) * 1000
        limit = policy.concurrency or 0
        return (gap, limit) if gap or limit else None

    def free(self, host: str) -> bool:
        """`HostLimiter.free`: ``host`` is not paused here and has no rate or in-flight limit
        (`wait` would neither sit out a pause nor ask Redis)."""
        return host not in self._paused and self.rule(host) is None

    async def wait(self, host: str, *, in_slot: bool = False) -> _Ticket | None:
        if self._paused:
            await self._sit_out_pause(host)
        if not self._policies and not self._default_ms:
            return None  # the common case: no limits anywhere, no Redis round trip
        rule = self.rule(host)
        if rule is None:
            return None
        if in_slot:
            # A redirect hop holds a slot: queueing behind a request that holds the line while
            # it waits for a slot could leave every slot waiting. It asks Redis on its own.
            return _Ticket(self, host, rule, None)
        line = self._lines.line(host)
        await line.acquire()
        return _Ticket(self, host, rule, line)

    async def _sit_out_pause(self, host: str) -> None:
        while (until := self._paused.get(host)) is not None:
            left = until - time.monotonic()
            if left <= 0:
                self._paused.pop(host, None)
                return
            await self._sleep(left)

    async def _turn(self, host: str, gap_ms: float, limit: int) -> Release | None:
        """Ask Redis until the host's turn comes (waiting, never going, while it is down or
        answers with an error)."""
        keys = host_keys(self._queue, host)
        lease = f"{self._me}:{next(self._leases)}" if limit else ""
        while True:
            try:
                args: list[str | float] = [repr(gap_ms), limit, lease, self._lease_ms]
                answer = int(await self._acquire(keys, args))
            except _REDIS_TROUBLE as exc:
                self._redis_down(exc)
                await self._sleep(DOWN_POLL_S)
                continue
            self._redis_up()
            if answer == 0:
                return self._releaser(keys[2], lease) if limit else None
            await self._sleep(FULL_POLL_S if answer < 0 else answer / 1000)

    def _releaser(self, flight: str, lease: str) -> Release:
        async def release() -> None:
            # In the background: an answered request never waits for Redis to hear it.
            self._background(self._give_back(flight, lease))

        return release

    async def _give_back(self, flight: str, lease: str) -> None:
        try:
            await self._redis.zrem(flight, lease)
        except _REDIS_TROUBLE as exc:  # the slot expires on its own
            log.warning("hosts.release_failed", extra={"error": repr(exc)})

    async def pause(self, host: str, seconds: float) -> None:
        """Pause ``host`` here at once, and for the fleet (capped by HARVESTER_RETRY_AFTER_CAP;
        told to Redis in the background, so the request never waits for it)."""
        ms = min(max(seconds, 0.0) * 1000, self._cap_ms)
        if ms <= 0:
            return
        now = time.monotonic()
        if len(self._paused) > PRUNE_AT:
            self._paused = {h: t for h, t in self._paused.items() if t > now}
        self._paused[host] = max(self._paused.get(host, 0.0), now + ms / 1000)
        self._background(self._share_pause(host, math.ceil(ms)))

    async def _share_pause(self, host: str, ms: int) -> None:
        keys = [host_keys(self._queue, host)[0], paused_key(self._queue)]
        try:
            await self._pause(keys, [host, ms])
        except _REDIS_TROUBLE as exc:
            log.warning("hosts.pause_not_shared", extra={"host": host, "error": repr(exc)})

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _redis_down(self, exc: BaseException) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("hosts.redis_unavailable", extra={"error": repr(exc)})

    def _redis_up(self) -> None:
        if self._down_since is not None:
            waited = time.monotonic() - self._down_since
            log.info("hosts.redis_recovered", extra={"outage_s": round(waited, 1)})
            self._down_since = None
