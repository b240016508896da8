"""`harvester status`: what the queue, the workers and the database say right now, in one read.

`gather` reads Postgres (recent rows, failures, sources), then Redis (queue, jobs in progress,
results, worker heartbeats) and returns a `Status`; rendering is `worker.ops.screen`'s job.
`judge_health` is ``harvester health``'s verdict on the worker processes. What the dashboard
draws beside `gather`'s snapshot (history, progress) is `worker.ops.trends`'.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, result_key_prefix
from arq.jobs import DeserializationError, deserialize_result

from worker.engine import store
from worker.queue import rejections
from worker.queue.heartbeat import WorkerState, read_workers
from worker.queue.hostlimits import read_pauses, read_policies
from worker.queue.serialization import deserialize
from worker.settings import Settings

Worker = WorkerState  # one worker process, as `harvester status` shows it

RECENT_JOBS = 10
RECENT_S = 3600.0  # how far back recent jobs go
RATE_MINUTES = 5
RATE_WINDOW_S = 60.0
MIN_RATE_SPAN_S = 1.0
_DEFER_SLACK_MS = 1000

_RECENT_JOBS = """
SELECT job_id, extract(epoch FROM max(at))::float8 AS last_at FROM (
    SELECT job_id, fetched_at AS at FROM documents
    WHERE fetched_at > now() - make_interval(secs => $2)
    UNION ALL
    SELECT job_id, failed_at FROM fetch_failures
    WHERE failed_at > now() - make_interval(secs => $2)
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

# Rows landed in the last RATE_WINDOW_S seconds, and how long ago the first of them landed: the
# rate is taken over the time activity actually covers, not over a whole window it only began.
_RECENT_RATE = """
SELECT count(*) AS n, extract(epoch FROM now() - min(at))::float8 AS span FROM (
    SELECT fetched_at AS at FROM documents WHERE fetched_at > now() - make_interval(secs => $1)
    UNION ALL
    SELECT failed_at FROM fetch_failures WHERE failed_at > now() - make_interval(secs => $1)
) o
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
class RecentJob:
    job_id: str
    function: str
    success: bool | None  # None: no stored result
    finished_at: str | None
    summary: dict[str, Any] | None
    # ok or failed (a stored result), running, queued (waiting for a retry or a worker), or
    # unknown (no result: it expired or was not kept)
    state: str = "unknown"


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
    urls_per_second: float  # over the last `rate_window_s` seconds
    failures_last_hour: dict[str, int]
    recent_jobs: list[RecentJob]
    sources: dict[str, int] = field(default_factory=dict)
    rate_window_s: float = RATE_WINDOW_S
    # default_rps (this command's HARVESTER_HOST_RPS), policies {host: {rps, concurrency}} and
    # paused {host: seconds left}: `harvester hosts`
    hosts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate(rows: int, span_s: float | None, window_s: float = RATE_WINDOW_S) -> tuple[float, float]:
    """(URLs per second, over how many seconds) for ``rows`` landed in the last ``window_s``
    seconds, the first of them ``span_s`` seconds ago: over the time actually covered, at
    least a second (a burst that has just landed is not a rate of thousands), at most the
    window."""
    if not rows or span_s is None:
        return 0.0, window_s
    covered = min(window_s, max(MIN_RATE_SPAN_S, span_s))
    return round(rows / covered, 1), round(covered, 1)


@dataclass(frozen=True, slots=True)
class _Db:
    """What Postgres says."""

    recent: list[tuple[str, float]]  # (job id, unix time of its last row), newest first
    per_minute: list[tuple[str, int]]
    landed: int
    span_s: float | None
    failures: dict[str, int]
    sources: dict[str, int]


async def _read_db(pool: asyncpg.Pool) -> _Db:
    with store.translated("cannot read status from Postgres"):
        async with pool.acquire() as conn:
            recent = [
                (r["job_id"], r["last_at"])
                for r in await conn.fetch(_RECENT_JOBS, RECENT_JOBS, RECENT_S)
            ]
            per_minute = await conn.fetch(_PER_MINUTE, RATE_MINUTES)
            landed = await conn.fetchrow(_RECENT_RATE, RATE_WINDOW_S)
            assert landed is not None  # an aggregate without GROUP BY: always one row
            failures = {r["error"]: r["n"] for r in await conn.fetch(_FAILURES)}
            src = await conn.fetchrow(_SOURCES)
    return _Db(
        recent=recent,
        per_minute=[
            (datetime.fromtimestamp(r["minute"], UTC).strftime("%H:%M"), r["n"]) for r in per_minute
        ],
        landed=landed["n"],
        span_s=landed["span"],
        failures=failures,
        sources=dict(src) if src is not None else {},
    )


def newest(*timed: list[tuple[str, float]]) -> list[str]:
    """The `RECENT_JOBS` newest job ids of lists of (job id, unix time): the jobs that landed
    rows and those the worker refused or that failed before landing them all
    (`worker.queue.rejections`)."""
    merged = sorted((row for rows in timed for row in rows), key=lambda row: -row[1])
    return list(dict.fromkeys(job_id for job_id, _ in merged))[:RECENT_JOBS]


async def _scan(redis: ArqRedis, pattern: str) -> list[str]:
    return [k.decode() async for k in redis.scan_iter(match=pattern, count=1000)]


async def _in_progress_keys(redis: ArqRedis) -> list[str]:
    """The ids of the jobs arq holds an in-progress key for (running, or a cron job's key that
    outlived its run a while)."""
    return [
        k[len(in_progress_key_prefix) :] for k in await _scan(redis, f"{in_progress_key_prefix}*")
    ]


async def _jobs(
    redis: ArqRedis, queue: str, recent: list[str]
) -> tuple[list[str], list[RecentJob]]:
    """(jobs in progress, the recent jobs) read in one transaction, so that no job is both: a
    job with a stored result is finished, whatever other key of it is still about."""
    ids = list(dict.fromkeys([*recent, *await _in_progress_keys(redis)]))
    async with redis.pipeline(transaction=True) as pipe:
        for job_id in ids:
            pipe.get(result_key_prefix + job_id)
            pipe.exists(in_progress_key_prefix + job_id)
            pipe.zscore(queue, job_id)
        replies: list[Any] = await pipe.execute()
    states = {}
    for n, job_id in enumerate(ids):
        result, running, score = replies[3 * n : 3 * n + 3]
        states[job_id] = _job(job_id, result, bool(running), score is not None)
    in_progress = sorted(j for j in ids if states[j].state == "running")
    return in_progress, [states[j] for j in recent]


def _job(job_id: str, raw: bytes | None, running: bool, queued: bool) -> RecentJob:
    if raw is None:
        # arq keeps a finished cron job's in-progress key a while: only a queued job runs.
        state = "running" if running and queued else "queued" if queued else "unknown"
        return RecentJob(job_id, "fetch_batch", None, None, None, state)
    try:
        r = deserialize_result(raw, deserializer=deserialize)
    except DeserializationError:
        return RecentJob(job_id, "?", None, None, None, "unknown")
    summary = r.result if isinstance(r.result, dict) else {"result": str(r.result)}
    state = "ok" if r.success else "failed"
    return RecentJob(job_id, r.function, r.success, r.finish_time.isoformat(), summary, state)


async def gather(settings: Settings, redis: ArqRedis, pool: asyncpg.Pool) -> Status:
    """Read the state of ``settings.queue`` and of the database."""
    queue = settings.queue
    db = await _read_db(pool)
    # Redis after Postgres: a job whose rows were read is seen finished if it has finished since.
    refused = await rejections.since(redis, queue, time.time() - RECENT_S)
    in_progress, recent = await _jobs(redis, queue, newest(db.recent, refused))
    waiting = await queue_counts(redis, queue, in_progress)
    per_second, window = rate(db.landed, db.span_s)
    return Status(
        queue=queue,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        queued=waiting.queued,
        ready=waiting.ready,
        deferred=waiting.queued - waiting.ready,
        oldest_ready_age_s=waiting.oldest_ready_age_s,
        in_progress=in_progress,
        workers=await read_workers(redis, queue),
        urls_per_minute=db.per_minute,
        urls_per_second=per_second,
        rate_window_s=window,
        failures_last_hour=db.failures,
        recent_jobs=recent,
        sources=db.sources,
        hosts=await _hosts(settings, redis),
    )


@dataclass(frozen=True, slots=True)
class Waiting:
    """The jobs of a queue waiting for a worker: all of them, those due now, and how long the
    oldest due one has waited (None: none is due)."""

    queued: int
    ready: int
    oldest_ready_age_s: float | None


async def queue_counts(redis: ArqRedis, queue: str, in_progress: list[str]) -> Waiting:
    """What waits in ``queue``, the jobs ``in_progress`` left out."""
    now_ms = time.time() * 1000
    # arq keeps a job in the queue's sorted set until it finishes: the running ones are not
    # waiting, so they are counted out of queued, ready and the oldest ready job.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zcard(queue)
        # arq rounds a job's score to the millisecond: a job enqueued this instant may sit a
        # fraction of one in the future. Only jobs due more than a second ahead are deferred.
        pipe.zcount(queue, "-inf", now_ms + _DEFER_SLACK_MS)
        pipe.zrangebyscore(
            queue, "-inf", now_ms + _DEFER_SLACK_MS, start=0, num=len(in_progress) + 1,
            withscores=True,
        )  # fmt: skip
        for job_id in in_progress:
            pipe.zscore(queue, job_id)
        total, due, first, *scores = await pipe.execute()
    running = set(in_progress)
    queued = total - sum(1 for x in scores if x is not None)
    ready = due - sum(1 for x in scores if x is not None and x <= now_ms + _DEFER_SLACK_MS)
    oldest = [(j, x) for j, x in first if j.decode() not in running][:1]
    age = round(max(0.0, now_ms - oldest[0][1]) / 1000, 1) if oldest else None
    return Waiting(queued, ready, age)


async def waiting_now(redis: ArqRedis, queue: str) -> Waiting:
    """`queue_counts` without reading Postgres or any job's result: the jobs in progress are
    those with an in-progress key (what the dashboard's queue history samples)."""
    return await queue_counts(redis, queue, await _in_progress_keys(redis))


async def _hosts(settings: Settings, redis: ArqRedis) -> dict[str, Any]:
    policies = await read_policies(redis, settings.queue)
    return {
        "default_rps": settings.host_rps,
        "policies": {host: p.as_dict() for host, p in policies.items()},
        "paused": await read_pauses(redis, settings.queue),
    }


@dataclass(frozen=True, slots=True)
class Health:
    """``harvester health``'s verdict: healthy or not, and the lines that say why."""

    healthy: bool
    lines: list[str]


def judge_health(workers: list[Worker], queue: str, host: str | None, min_alive: int = 1) -> Health:
    """Healthy when every worker process of ``host`` (of every host when None) is alive and at
    least ``min_alive`` of them are."""
    mine = [w for w in workers if host is None or w.host == host]
    where = "on any host" if host is None else f"on host {host!r}"
    alive = [w for w in mine if w.alive]
    dead = [w for w in mine if not w.alive]
    lines = [
        f"dead: worker {w.id!r} (pid {w.pid}) stopped reporting {_ago(w.last_beat_age_s)}"
        for w in dead
    ]
    if not mine:
        return Health(False, [f"unhealthy: no worker {where} has reported on {queue!r} recently"])
    if dead:
        head = f"unhealthy: {len(dead)} of {len(mine)} worker processes {where} stopped reporting"
        return Health(False, [head, *lines])
    if len(alive) < min_alive:
        head = f"unhealthy: {len(alive)} worker process(es) alive {where}, --min {min_alive} wanted"
        return Health(False, [head])
    return Health(True, [f"healthy: {len(alive)} worker process(es) alive {where} on {queue!r}"])


def _ago(age_s: float | None) -> str:
    return "(last beat unknown)" if age_s is None else f"{age_s:.0f} s ago"
