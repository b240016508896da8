"""Enqueueing from Python: a JSON-speaking arq pool and `enqueue_urls`.

async with open_queue(load_settings()) as redis:
    job_ids = await enqueue_urls(redis, urls, batch_size=1000, source="catalog")
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from worker.serialization import deserialize, serialize
from worker.settings import Settings

log = logging.getLogger("harvester.client")

JOB_NAME = "fetch_batch"


def redis_settings(settings: Settings) -> RedisSettings:
    """arq `RedisSettings` from REDIS_URL (database number, password and TLS included)."""
    rs = RedisSettings.from_dsn(settings.redis_url)
    rs.conn_timeout = max(1, int(settings.connect_timeout))
    rs.conn_retries = 5
    rs.conn_retry_delay = 1
    rs.retry_on_timeout = True
    return rs


async def connect(settings: Settings) -> ArqRedis:
    """An arq pool that speaks JSON, on HARVESTER_QUEUE."""
    return await create_pool(
        redis_settings(settings),
        job_serializer=serialize,
        job_deserializer=deserialize,
        default_queue_name=settings.queue,
    )


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
