"""Enqueueing from Python: a JSON-speaking arq pool and `enqueue_urls`.

async with open_queue(load_settings()) as redis:
    job_ids = await enqueue_urls(redis, urls, batch_size=1000, source="catalog")
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from arq.connections import ArqRedis
from arq.jobs import DeserializationError, Job
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.backoff import Backoff
from worker.errors import BadJobError, HarvesterError
from worker.queue.heartbeat import beat_key, worker_id
from worker.queue.payload import JOB_NAME, FetchBatch, job_id_problems, make_batch
from worker.queue.serialization import deserialize, serialize
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


def redis_pool(settings: Settings) -> ArqRedis:
    """A JSON-speaking arq client for REDIS_URL (db number, password, ``rediss://`` TLS options).

    Built directly rather than with `arq.create_pool` so that it has a socket timeout (a hung
    Redis cannot stall the worker) and retries commands through a restart. Connects lazily.
    """
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "retry": redis_retry(settings),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
        "health_check_interval": 30,
    }
    if not settings.redis_url.startswith("unix://"):
        options["socket_keepalive"] = True  # TCP only: a Unix socket connection refuses it
    pool = ConnectionPool.from_url(settings.redis_url, **options)
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


def _batches(urls: Iterable[str], size: int) -> Iterable[list[str]]:
    it = iter(urls)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


async def enqueue_urls(
    redis: ArqRedis,
    urls: Iterable[str],
    *,
    batch_size: int = 1000,
    source: str | None = None,
    job_id_prefix: str | None = None,
) -> list[str]:
    """Enqueue ``urls`` as `fetch_batch` jobs of at most ``batch_size``; return the job ids.

    With ``job_id_prefix`` the ids are ``<prefix>-<n>``, so enqueueing the same file twice
    enqueues nothing new (the job id is the idempotency key); without, arq picks random ids.
    Raises `BadJobError` for a prefix or source no job may carry, before enqueueing anything,
    and `JobIdTakenError` when an id holds a different batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    problems = job_id_problems(f"{job_id_prefix}-0") if job_id_prefix is not None else []
    if problems:
        raise BadJobError("; ".join(problems))
    job_ids: list[str] = []
    for n, chunk in enumerate(_batches(urls, batch_size)):
        wanted = f"{job_id_prefix}-{n}" if job_id_prefix else None
        batch = make_batch(urls=chunk, source=source)
        try:
            job_id, new = await enqueue_batch(redis, batch, job_id=wanted)
        except JobIdTakenError as exc:
            raise JobIdTakenError(str(exc), job_ids) from None
        if not new:
            log.info("enqueue.duplicate", extra={"job_id": job_id, "same_batch": True})
        job_ids.append(job_id)
    return job_ids


def health_check_key(settings: Settings) -> str:
    """The heartbeat key of this worker process (see `worker.queue.heartbeat`).

    One per process rather than arq's one per queue, so that a dead worker is not covered up
    by a live one on the same host or elsewhere.
    """
    return beat_key(settings.queue, worker_id())
