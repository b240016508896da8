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

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.serialization import deserialize, serialize
from worker.settings import Settings

log = logging.getLogger("harvester.client")

JOB_NAME = "fetch_batch"


# Each command waits at most this long between reconnection attempts during an outage.
_RETRY_CAP_S = 1.0


def redis_retry(settings: Settings) -> Retry:
    """Retry every Redis command through an outage of about HARVESTER_REDIS_RETRY_TIME seconds.

    arq's own settings give up on the first connection error; with this a Redis restart is a
    pause, and only a longer outage surfaces as an error (and makes the worker exit).
    """
    retries = math.ceil(settings.redis_retry_time / _RETRY_CAP_S) + 4
    return Retry(EqualJitterBackoff(cap=_RETRY_CAP_S, base=0.05), retries)


def redis_pool(settings: Settings) -> ArqRedis:
    """A JSON-speaking arq client for REDIS_URL (db number, password, ``rediss://`` TLS options).

    Built directly rather than with `arq.create_pool` so that it has a socket timeout (a hung
    Redis cannot stall the worker) and retries commands through a restart. Connects lazily.
    """
    pool = ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.connect_timeout,
        socket_keepalive=True,
        retry=redis_retry(settings),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
        health_check_interval=30,
    )
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
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    job_ids: list[str] = []
    for n, chunk in enumerate(_batches(urls, batch_size)):
        wanted = f"{job_id_prefix}-{n}" if job_id_prefix else None
        if source is None:
            job = await redis.enqueue_job(JOB_NAME, _job_id=wanted, urls=chunk)
        else:
            job = await redis.enqueue_job(JOB_NAME, _job_id=wanted, urls=chunk, source=source)
        if job is None:
            assert wanted is not None
            log.info("enqueue.duplicate", extra={"job_id": wanted})
            job_ids.append(wanted)
        else:
            job_ids.append(job.job_id)
    return job_ids
