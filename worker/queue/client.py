"""Enqueueing from Python: `open_queue` (a JSON-speaking arq pool) and `enqueue_urls`.

async with open_queue(load_settings()) as redis:
    job_ids = await enqueue_urls(redis, urls, batch_size=1000, source="catalog")

Opening the queue is `worker.queue.connection`'s (`redis_pool`, `connect`, and `redis_error`, the
one place where redis-py's errors become harvester's); here URLs are cut into jobs a worker
accepts (`plan_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

import orjson
from arq.connections import ArqRedis
from arq.jobs import DeserializationError, Job

from worker.errors import BadJobError, HarvesterError
from worker.logs import redact
from worker.queue.checks import job_id_problems
from worker.queue.connection import connect
from worker.queue.payload import JOB_NAME, FetchBatch, make_batch
from worker.queue.serialization import MAX_ENQUEUE_TIME_MS, deserialize, serialize
from worker.settings import Settings

log = logging.getLogger("harvester.client")


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
