"""The Redis connection harvester uses: a JSON-speaking arq pool that retries through an outage
(plain, TLS or Sentinel), a probe, and the one place redis-py's errors become harvester's."""

from __future__ import annotations

import math
from typing import Any, Final
from urllib.parse import urlsplit

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import AbstractBackoff, NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.backoff import Backoff
from worker.errors import ConfigError, HarvesterError, RedisUnavailableError
from worker.logs import redact
from worker.queue.serialization import deserialize, serialize
from worker.serverurl import SentinelURL, is_sentinel, parse_sentinel_url
from worker.settings import Settings

# Each command waits at most this long between reconnection attempts during an outage.
_RETRY_CAP_S = 1.0


def redis_retry(settings: Settings) -> Retry:
    """Retry every Redis command through an outage of about HARVESTER_REDIS_RETRY_TIME seconds.

    arq's own settings give up on the first connection error; with this a Redis restart is a
    pause, and only a longer outage surfaces as an error (and makes the worker exit).
    """
    retries = math.ceil(settings.redis_retry_time / _RETRY_CAP_S) + 4
    return Retry(_RedisBackoff(Backoff(base=0.05, cap=_RETRY_CAP_S, jitter="equal")), retries)


class _RedisBackoff(AbstractBackoff):
    """harvester's `Backoff` in the shape redis-py's `Retry` takes."""

    def __init__(self, policy: Backoff) -> None:
        self._policy = policy

    def reset(self) -> None:
        pass

    def compute(self, failures: int) -> float:
        return self._policy.delay(failures + 1)


def _pool(settings: Settings, *, retry: bool) -> ConnectionPool:
    """A connection pool for REDIS_URL (db number, password, ``rediss://`` TLS options), with
    timeouts, and with `redis_retry` or (``retry=False``) a single attempt per command."""
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "health_check_interval": 30,
    }
    if retry:
        options["retry"] = redis_retry(settings)
        options["retry_on_error"] = [RedisConnectionError, RedisTimeoutError, OSError]
    if not settings.redis_url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only: a Unix socket connection refuses it
    if is_sentinel(settings.redis_url):
        return _sentinel_pool(parse_sentinel_url(settings.redis_url), options)
    return ConnectionPool.from_url(settings.redis_url, **options)


def _sentinel_pool(target: SentinelURL, options: dict[str, Any]) -> ConnectionPool:
    """A pool whose every new connection asks the sentinels where the primary is now: after a
    failover the next (retried) command reaches the promoted replica, and a connection to a
    demoted primary (READONLY) is dropped and asked again."""
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_options["username"] = target.sentinel_username
    sentinel_options["password"] = target.sentinel_password
    # redis-py leaves its Sentinel classes unannotated.
    manager = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return _SentinelPool(  # type: ignore[no-untyped-call]
        target.service,
        manager,
        db=target.db,
        username=target.username,
        password=target.password,
        connection_class=_SentinelConnection,
        **options,
    )


class _SentinelConnection(SentinelManagedConnection):
    """A connection to the primary the sentinels name, tried once per address they give.

    redis-py would retry a refused address with the whole retry policy (``redis_retry``: about
    HARVESTER_REDIS_RETRY_TIME) before asking the sentinels again, so a killed primary would
    hold every command that long although its replica was promoted in seconds. Here each retry
    asks the sentinels (`SentinelManagedConnection.connect` retries with the policy)."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        policy, self.retry = self.retry, _ONCE
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self.retry = policy


_ONCE: Final = Retry(NoBackoff(), 0)


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, which also closes its connections to the sentinels when it is
    closed (redis-py leaves them open)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        # Only a full close: redis-py also calls this with inuse_connections=False when the
        # primary moved, while other commands may be asking the sentinels.
        if inuse_connections:
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def redis_pool(settings: Settings) -> ArqRedis:
    """A JSON-speaking arq client for REDIS_URL (db number, password, ``rediss://`` TLS options,
    or the primary of a ``redis+sentinel://`` group).

    Built directly rather than with `arq.create_pool` so that it has a socket timeout (a hung
    Redis cannot stall the worker) and retries commands through a restart. Connects lazily.
    """
    pool = _pool(settings, retry=True)
    redis = ArqRedis(
        pool,
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue,
    )
    # As `Redis.from_pool` does: the client owns the pool and closes it with itself.
    redis.auto_close_connection_pool = True
    return redis


async def connect(settings: Settings) -> ArqRedis:
    """`redis_pool`, checked with a PING so a wrong REDIS_URL fails here."""
    redis = redis_pool(settings)
    try:
        await redis.ping()
    except BaseException:
        await redis.aclose()
        raise
    return redis


async def probe(settings: Settings) -> None:
    """One PING on a connection of its own, without retries: raises redis-py's error at once
    when Redis cannot be reached (so a worker can say so before riding out the outage)."""
    client = ArqRedis(_pool(settings, retry=False))
    client.auto_close_connection_pool = True
    try:
        await client.ping()
    finally:
        await client.aclose()


def redis_error(settings: Settings, exc: BaseException) -> HarvesterError:
    """The one translation of a redis-py error: `ConfigError` when Redis refuses REDIS_URL
    itself (a database it does not have, wrong credentials), else `RedisUnavailableError`.
    Both name REDIS_URL, the URL's password hidden."""
    if isinstance(exc, AuthenticationError | NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))
    ):
        return ConfigError(f"REDIS_URL: Redis refused the credentials ({exc})")
    if isinstance(exc, ResponseError) and "DB index is out of range" in str(exc):
        url = settings.redis_url
        db = parse_sentinel_url(url).db if is_sentinel(url) else urlsplit(url).path.strip("/")
        return ConfigError(
            f"REDIS_URL: Redis has no database {db or 0} ({exc}): use a database number the "
            "server has (16 by default)"
        )
    detail = str(exc)
    if isinstance(exc, MasterNotFoundError) and "AuthenticationError(" in detail:
        # redis-py takes a sentinel that refuses the password for one that is down, and says
        # so only in this text (its errors, one per sentinel).
        return ConfigError(
            "REDIS_URL: the sentinels refused the credentials (sentinel_password, "
            "sentinel_username)"
        )
    if isinstance(exc, MasterNotFoundError):  # its text is a repr of every sentinel client
        service = parse_sentinel_url(settings.redis_url).service
        detail = f"no sentinel named a primary for {service!r} (are they up, is the name right?)"
    return RedisUnavailableError(
        f"Redis is unavailable at {redact(settings.redis_url)} (REDIS_URL): {detail}"
    )
