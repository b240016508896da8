"""Enqueueing from Python: a JSON-speaking arq pool and `enqueue_urls`.

async with open_queue(load_settings()) as redis:
    job_ids = await enqueue_urls(redis, urls, batch_size=1000, source="catalog")

Also the one place where redis-py's errors become harvester's (`redis_error`), and where URLs
are cut into jobs a worker accepts (`plan_batches`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from arq.connections import ArqRedis
from arq.jobs import DeserializationError, Job
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
from worker.errors import BadJobError, ConfigError, HarvesterError, RedisUnavailableError
from worker.logs import redact
from worker.queue.checks import job_id_problems
from worker.queue.heartbeat import beat_key, worker_id
from worker.queue.payload import JOB_NAME, FetchBatch, make_batch
from worker.queue.serialization import MAX_ENQUEUE_TIME_MS, deserialize, serialize
from worker.serverurl import SentinelURL, is_sentinel, parse_sentinel_url
from worker.settings import Settings

log = logging.getLogger("harvester.client")


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


@asynccontextmanager
async def open_queue(settings: Settings) -> AsyncIterator[ArqRedis]:
    """`connect`, closed on exit."""
    redis = await connect(settings)
    try:
        yield redis
    finally:
        await redis.aclose()


class JobIdTakenError(HarvesterError):
    """A job id is already used by a different batch (queued, running, or its result kept).

    ``enqueued`` holds the ids of the jobs enqueued before the conflict.
    """

    def __init__(self, message: str, enqueued: list[str] | None = None) -> None:
        super().__init__(message)
        self.enqueued = enqueued or []


async def submit(redis: ArqRedis, batch: FetchBatch, job_id: str | None = None) -> str | None:
    """Put ``batch`` in the queue as a `fetch_batch` job; its id, or None if arq already knows
    ``job_id``. Every job harvester enqueues goes through here, built from the one model."""
    job = await redis.enqueue_job(JOB_NAME, _job_id=job_id, **batch.as_kwargs())
    return None if job is None else job.job_id


async def enqueue_batch(
    redis: ArqRedis, batch: FetchBatch, *, job_id: str | None = None
) -> tuple[str, bool]:
    """Enqueue one `fetch_batch` job; return (its id, whether it is new).

    An id arq already knows is fine when it holds this same batch (enqueueing is then an
    idempotent no-op, and False says so); when it holds another, `JobIdTakenError`.
    """
    for _ in range(2):
        new_id = await submit(redis, batch, job_id)
        if new_id is not None:
            return new_id, True
        assert job_id is not None  # arq refuses only ids it was given
        try:
            existing = await Job(
                job_id, redis, _queue_name=redis.default_queue_name, _deserializer=deserialize
            ).info()
        except DeserializationError:
            existing = None
        if existing is None:
            continue  # gone between the two reads (its result expired): try again
        if existing.function == JOB_NAME and existing.kwargs == batch.as_kwargs():
            return job_id, False
        break
    raise JobIdTakenError(
        f"job id {job_id!r} is already used by a different batch (job ids are idempotency "
        "keys: choose a new one, or wait until its result expires)"
    )


# The arq envelope around a job's keyword arguments, as wide as it can be written; a batch's
# job is this, its source, and its URLs as JSON strings separated by commas.
_ENVELOPE: Final[dict[str, object]] = {
    "t": None,
    "f": JOB_NAME,
    "a": [],
    "k": {},
    "et": MAX_ENQUEUE_TIME_MS,
}


def _job_overhead(fields: Mapping[str, object]) -> int:
    """The bytes of a job of ``fields`` whose list (``"urls":[]`` or ``"requests":[]``) is
    empty."""
    return len(serialize({**_ENVELOPE, "k": fields}))


# What a job's list may hold: URLs, or request objects ({"url", "method", "json", "headers"}).
Item = str | Mapping[str, object]


def plan_batches(
    items: Iterable[Item],
    *,
    batch_size: int,
    source: str | None,
    max_urls: int | None,
    max_job_bytes: int,
    auth: str | None = None,
    profiles: Collection[str] | None = None,
    shared: Mapping[str, object] | None = None,
    max_pages: int | None = None,
    webhooks: bool | None = None,
) -> Iterator[FetchBatch]:
    """``items`` cut into `FetchBatch`es a worker accepts: at most ``batch_size`` URLs (itself
    at most ``max_urls``, HARVESTER_MAX_BATCH_URLS) and, as a job's JSON, at most
    ``max_job_bytes`` (HARVESTER_MAX_JOB_BYTES). ``items`` are URLs (the jobs' ``urls``) or,
    when the first is an object, request objects (their ``requests``); ``shared`` holds the
    fields every job carries (``method``, ``json``, ``headers``). The arguments are checked now,
    before an item is read (``auth`` against ``profiles`` when the credentials file is known,
    ``paginate`` against ``max_pages``, HARVESTER_MAX_PAGES; ``notify_url`` refused when
    ``webhooks`` is False, without HARVESTER_WEBHOOK_SECRET);
    an item that could not fit in any job raises `BadJobError` when it is reached."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if max_urls is not None and batch_size > max_urls:
        raise BadJobError(
            f"a batch size of {batch_size} is over HARVESTER_MAX_BATCH_URLS ({max_urls}): "
            "workers refuse larger jobs"
        )
    fields: dict[str, Any] = {**(shared or {})}
    fields.update((k, v) for k, v in (("source", source), ("auth", auth)) if v is not None)
    # The model checks these only as part of a batch: check them on a batch of one now.
    make_batch(
        urls=["https://example.invalid/"],
        profiles=profiles,
        max_pages=max_pages,
        webhooks=webhooks,
        **fields,
    )
    return _cut(iter(items), batch_size, fields, max_urls, max_job_bytes)


def _made(
    key: str, chunk: list[Item], fields: Mapping[str, Any], max_urls: int | None
) -> FetchBatch:
    job: dict[str, Any] = {key: chunk, **fields}
    return make_batch(max_urls=max_urls, **job)


def _cut(
    items: Iterator[Item],
    size: int,
    fields: dict[str, Any],
    max_urls: int | None,
    max_bytes: int,
) -> Iterator[FetchBatch]:
    chunk: list[Item] = []
    key = "urls"
    overhead = used = 0
    for item in items:
        if not chunk and not used:  # the first item says which list the jobs hold
            key = "urls" if isinstance(item, str) else "requests"
            overhead = used = _job_overhead({key: [], **fields})
        cost = len(orjson.dumps(item)) + (1 if chunk else 0)  # a comma after the first
        if chunk and (len(chunk) == size or used + cost > max_bytes):
            yield _made(key, chunk, fields, max_urls)
            chunk, used, cost = [], overhead, cost - 1
        if used + cost > max_bytes:
            url = item if isinstance(item, str) else str(item.get("url"))
            raise BadJobError(
                f"a {key[:-1]} of {cost} bytes cannot fit in a job under "
                f"HARVESTER_MAX_JOB_BYTES ({max_bytes}): {redact(url)[:100]}..."
            )
        chunk.append(item)
        used += cost
    if chunk:
        yield _made(key, chunk, fields, max_urls)


async def enqueue_urls(
    redis: ArqRedis,
    urls: Iterable[str],
    *,
    batch_size: int = 1000,
    source: str | None = None,
    job_id_prefix: str | None = None,
    max_urls: int | None = None,
    max_job_bytes: int = 8 * 1024 * 1024,
) -> list[str]:
    """Enqueue ``urls`` as `fetch_batch` jobs (`plan_batches`); return the job ids.

    With ``job_id_prefix`` the ids are ``<prefix>-<n>``, so enqueueing the same file twice
    enqueues nothing new (the job id is the idempotency key); without, arq picks random ids.
    Raises `BadJobError` for a batch size, prefix or source no job may carry, before enqueueing
    anything, and `JobIdTakenError` when an id holds a different batch.
    """
    job_ids: list[str] = []
    batches = plan_batches(
        urls,
        batch_size=batch_size,
        source=source,
        max_urls=max_urls,
        max_job_bytes=max_job_bytes,
    )
    async for job_id in enqueue_batches(redis, batches, job_id_prefix=job_id_prefix):
        job_ids.append(job_id)
    return job_ids


def check_prefix(job_id_prefix: str | None) -> None:
    """Raise `BadJobError` if ids ``<job_id_prefix>-<n>`` are ids no intake may use."""
    problems = job_id_problems(f"{job_id_prefix}-0") if job_id_prefix is not None else []
    if problems:
        raise BadJobError("invalid job id prefix: " + "; ".join(problems))


async def enqueue_batches(
    redis: ArqRedis, batches: Iterable[FetchBatch], *, job_id_prefix: str | None = None
) -> AsyncIterator[str]:
    """Enqueue each batch and yield its job id as soon as it is queued (see `enqueue_urls`)."""
    check_prefix(job_id_prefix)
    job_ids: list[str] = []
    for n, batch in enumerate(batches):
        wanted = f"{job_id_prefix}-{n}" if job_id_prefix else None
        try:
            job_id, new = await enqueue_batch(redis, batch, job_id=wanted)
        except JobIdTakenError as exc:
            raise JobIdTakenError(str(exc), job_ids) from None
        if not new:
            log.info("enqueue.duplicate", extra={"job_id": job_id, "same_batch": True})
        job_ids.append(job_id)
        yield job_id


def health_check_key(settings: Settings) -> str:
    """The heartbeat key of this worker process (see `worker.queue.heartbeat`).

    One per process rather than arq's one per queue, so that a dead worker is not covered up
    by a live one on the same host or elsewhere.
    """
    return beat_key(settings.queue, worker_id())
