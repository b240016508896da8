"""`harvester status`: what the queue, the workers and the database say right now, in one read.

`gather` reads Redis (queue, jobs in progress, results, heartbeats) and Postgres (recent rows,
failures, sources) and returns a `Status`; rendering is `worker.cli.status`'s job.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.constants import health_check_key_suffix, in_progress_key_prefix, result_key_prefix
from arq.jobs import DeserializationError, deserialize_result

from worker.engine import store
from worker.queue.serialization import deserialize
from worker.settings import Settings

RECENT_JOBS = 10
RATE_MINUTES = 5
_DEFER_SLACK_MS = 1000

_RECENT_JOBS = """
SELECT job_id, max(at) AS last_at FROM (
    SELECT job_id, fetched_at AS at FROM documents WHERE fetched_at > now() - interval '1 hour'
    UNION ALL
    SELECT job_id, failed_at FROM fetch_failures WHERE failed_at > now() - interval '1 hour'
) o GROUP BY job_id ORDER BY last_at DESC LIMIT $1
"""

_PER_MINUTE = """
SELECT extract(epoch FROM m)::bigint AS minute, sum(n)::bigint AS n FROM (
    SELECT date_trunc('minute', fetched_at) AS m, count(*) AS n FROM documents
    WHERE fetched_at >= date_trunc('minute', now()) - make_interval(mins => $1) GROUP BY 1
    UNION ALL
    SELECT date_trunc('minute', failed_at), count(*) FROM fetch_failures
    WHERE failed_at >= date_trunc('minute', now()) - make_interval(mins => $1) GROUP BY 1
) o GROUP BY m ORDER BY m
"""

_LAST_MINUTE = """
SELECT (SELECT count(*) FROM documents WHERE fetched_at > now() - interval '1 minute')
     + (SELECT count(*) FROM fetch_failures WHERE failed_at > now() - interval '1 minute')
"""

_FAILURES = """
SELECT error, count(*) AS n FROM fetch_failures WHERE failed_at > now() - interval '1 hour'
GROUP BY error ORDER BY n DESC, error
"""

_SOURCES = """
SELECT count(*) AS total,
       count(*) FILTER (WHERE enabled AND next_due_at <= now()) AS due,
       count(*) FILTER (WHERE claimed_until > now()) AS polling,
       count(*) FILTER (WHERE consecutive_failures > 0) AS failing
FROM sources
"""


@dataclass(frozen=True, slots=True)
class Worker:
    """A worker host's arq heartbeat."""

    host: str
    heartbeat: str
    expires_in_s: float


@dataclass(frozen=True, slots=True)
class RecentJob:
    job_id: str
    function: str
    success: bool | None  # None: no stored result (still running, or result expired)
    finished_at: str | None
    summary: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Status:
    """Everything `harvester status` shows; JSON-serialisable through `as_dict`."""

    queue: str
    at: str
    queued: int
    ready: int
    deferred: int
    oldest_ready_age_s: float | None
    in_progress: list[str]
    workers: list[Worker]
    urls_per_minute: list[tuple[str, int]]  # (minute, URLs landed), oldest first
    urls_per_second: float  # over the last 60 seconds
    failures_last_hour: dict[str, int]
    recent_jobs: list[RecentJob]
    sources: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def _scan(redis: ArqRedis, pattern: str) -> list[str]:
    return [k.decode() async for k in redis.scan_iter(match=pattern, count=1000)]


async def _workers(redis: ArqRedis, queue: str) -> list[Worker]:
    prefix = f"{queue}{health_check_key_suffix}"
    workers = []
    for key in sorted(await _scan(redis, f"{prefix}*")):
        value = await redis.get(key)
        ttl = await redis.pttl(key)
        if value is None:
            continue
        host = key[len(prefix) :].lstrip(":") or "(any)"
        workers.append(Worker(host, value.decode(errors="replace"), max(0, ttl) / 1000))
    return workers


async def _recent_jobs(redis: ArqRedis, job_ids: list[str]) -> list[RecentJob]:
    jobs = []
    for job_id in job_ids:
        raw = await redis.get(result_key_prefix + job_id)
        if raw is None:
            jobs.append(RecentJob(job_id, "fetch_batch", None, None, None))
            continue
        try:
            r = deserialize_result(raw, deserializer=deserialize)
        except DeserializationError:
            jobs.append(RecentJob(job_id, "?", None, None, None))
            continue
        summary = r.result if isinstance(r.result, dict) else {"result": str(r.result)}
        jobs.append(RecentJob(job_id, r.function, r.success, r.finish_time.isoformat(), summary))
    return jobs


async def gather(settings: Settings, redis: ArqRedis, pool: asyncpg.Pool) -> Status:
    """Read the state of ``settings.queue`` and of the database."""
    queue = settings.queue
    now_ms = time.time() * 1000
    queued = await redis.zcard(queue)
    # arq rounds a job's score to the millisecond: a job enqueued this instant may sit a fraction
    # of one in the future. Only jobs due more than a second ahead count as deferred.
    ready = await redis.zcount(queue, "-inf", now_ms + _DEFER_SLACK_MS)
    oldest = await redis.zrangebyscore(
        queue, "-inf", now_ms + _DEFER_SLACK_MS, start=0, num=1, withscores=True
    )
    in_progress = []
    for key in await _scan(redis, f"{in_progress_key_prefix}*"):
        job_id = key[len(in_progress_key_prefix) :]
        if await redis.zscore(queue, job_id) is not None:
            in_progress.append(job_id)
    with store.translated("cannot read status from Postgres"):
        async with pool.acquire() as conn:
            recent = [r["job_id"] for r in await conn.fetch(_RECENT_JOBS, RECENT_JOBS)]
            per_minute = await conn.fetch(_PER_MINUTE, RATE_MINUTES)
            last_minute = await conn.fetchval(_LAST_MINUTE)
            failures = {r["error"]: r["n"] for r in await conn.fetch(_FAILURES)}
            src = await conn.fetchrow(_SOURCES)
    return Status(
        queue=queue,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        queued=queued,
        ready=ready,
        deferred=queued - ready,
        oldest_ready_age_s=round(max(0.0, now_ms - oldest[0][1]) / 1000, 1) if oldest else None,
        in_progress=sorted(in_progress),
        workers=await _workers(redis, queue),
        urls_per_minute=[
            (datetime.fromtimestamp(r["minute"], UTC).strftime("%H:%M"), r["n"]) for r in per_minute
        ],
        urls_per_second=round(last_minute / 60, 1),
        failures_last_hour=failures,
        recent_jobs=await _recent_jobs(redis, recent),
        sources=dict(src) if src is not None else {},
    )
