"""Registered sources in Postgres: managing them, claiming the due ones, and loading their state.

The cron task `jobs.poll_sources` calls `enqueue_due`. It claims due sources with
``FOR UPDATE SKIP LOCKED``, so workers running the cron at once never claim the same source,
and enqueues them as ordinary `fetch_batch` jobs with ``scheduled: true`` before it commits. A
run cut short (SIGTERM, a lost connection) rolls its claim back and the sources stay due; a job
it had already enqueued has an id derived from the sources and their due time, so the next
run's enqueue of the same poll is a no-op in arq.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from worker.engine import store
from worker.engine.polling import SourceState
from worker.errors import BadJobError, StoreError
from worker.queue.client import submit
from worker.queue.payload import FetchBatch, url_problem
from worker.settings import Settings

# How long a claimed source is left to its poll job before another cron run may claim it again
# (a job lost with its queue); at least this, and several job timeouts.
CLAIM_LEASE_MIN_S = 3600.0
_MAX_REENQUEUE = 100

_DUE = """
SELECT id, url, name, auth, next_due_at FROM sources
WHERE enabled AND next_due_at <= now() AND (claimed_until IS NULL OR claimed_until <= now())
ORDER BY next_due_at, id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

_CLAIM = """
UPDATE sources SET poll_job_id = $2, claimed_until = now() + make_interval(secs => $3)
WHERE id = ANY($1::bigint[])
"""

_STATES = """
SELECT id, url, interval_s, etag, last_modified, content_hash, consecutive_failures
FROM sources
WHERE harvester_url_key(url) = ANY (SELECT harvester_url_key(u) FROM unnest($1::text[]) AS u)
"""

_UPSERT = """
INSERT INTO sources (url, name, interval_s, auth)
SELECT u, $2, $3, $4 FROM unnest($1::text[]) AS u
ON CONFLICT (harvester_url_key(url)) DO UPDATE
    SET name = EXCLUDED.name, interval_s = EXCLUDED.interval_s, auth = EXCLUDED.auth,
        next_due_at = LEAST(sources.next_due_at, now() + make_interval(secs => EXCLUDED.interval_s))
RETURNING (xmax = 0) AS inserted
"""

_LIST = """
SELECT id, url, name, auth, interval_s, enabled, next_due_at, last_polled_at, last_status,
       last_outcome, consecutive_failures, last_success_at, poll_job_id
FROM sources
WHERE ($1::text IS NULL OR name = $1)
ORDER BY id
LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A registered source as `harvester sources list` shows it."""

    id: int
    url: str
    name: str | None
    auth: str | None
    interval_s: int
    enabled: bool
    next_due_at: datetime
    last_polled_at: datetime | None
    last_status: int | None
    last_outcome: str | None
    consecutive_failures: int
    last_success_at: datetime | None
    poll_job_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            name: (value.isoformat() if isinstance(value, datetime) else value)
            for name, value in ((f, getattr(self, f)) for f in self.__slots__)
        }


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What one cron run did: sources claimed and the poll jobs they went out in."""

    sources: int
    jobs: tuple[str, ...]


def claim_lease(settings: Settings) -> float:
    """Seconds a claimed source waits for its poll before it may be claimed again."""
    return max(CLAIM_LEASE_MIN_S, 5 * settings.job_timeout)


def poll_job_id(rows: Sequence[asyncpg.Record]) -> str:
    """The same sources due at the same time always make the same job id."""
    digest = hashlib.sha256()
    for r in rows:
        digest.update(f"{r['id']}@{r['next_due_at'].isoformat()};".encode())
    return f"poll-{digest.hexdigest()[:24]}"


async def enqueue_due(pool: asyncpg.Pool, redis: ArqRedis, settings: Settings) -> Enqueued:
    """Claim the sources that are due and enqueue them as scheduled `fetch_batch` jobs.

    At most ``HARVESTER_SOURCES_CLAIM_LIMIT`` sources per run (the rest stay due for the next
    run), in jobs of at most ``HARVESTER_SOURCES_BATCH_SIZE`` URLs, one source name and
    credential profile per job.
    """
    jobs: list[str] = []
    with store.translated("cannot claim due sources"):
        async with pool.acquire() as conn, conn.transaction():
            due = await conn.fetch(_DUE, settings.sources_claim_limit)
            groups: dict[tuple[str | None, str | None], list[asyncpg.Record]] = {}
            for r in due:
                groups.setdefault((r["name"], r["auth"]), []).append(r)
            step = settings.sources_batch_size
            for (name, auth), rows in groups.items():
                for i in range(0, len(rows), step):
                    chunk = rows[i : i + step]
                    urls = [r["url"] for r in chunk]
                    batch = FetchBatch(urls=urls, source=name, scheduled=True, auth=auth)
                    # Enqueued before the claim commits: should the commit not happen, the
                    # sources stay due and the next run's enqueue of this same id is a no-op.
                    job_id = await _enqueue(redis, poll_job_id(chunk), batch)
                    await conn.execute(
                        _CLAIM, [r["id"] for r in chunk], job_id, claim_lease(settings)
                    )
                    jobs.append(job_id)
    return Enqueued(len(due), tuple(jobs))


async def _enqueue(redis: ArqRedis, job_id: str, batch: FetchBatch) -> str:
    """Enqueue a poll as ``job_id``; return the id of the job that will run it.

    arq refuses an id it knows. If that job is still waiting or running (an earlier run enqueued
    it, then its claim rolled back), it is this poll. If it has finished (its result is kept for
    a day) without settling the sources, e.g. its last try ran out of time, a new id is used.
    """
    for n in range(_MAX_REENQUEUE):
        candidate = job_id if n == 0 else f"{job_id}-{n}"
        if await submit(redis, batch, candidate) is not None:
            return candidate
        status = await Job(candidate, redis, _queue_name=redis.default_queue_name).status()
        if status in (JobStatus.deferred, JobStatus.queued, JobStatus.in_progress):
            return candidate
    raise StoreError(f"cannot enqueue poll {job_id}: {_MAX_REENQUEUE} ids already used")


async def load_states(pool: asyncpg.Pool, urls: Sequence[str]) -> dict[str, SourceState]:
    """The stored state of each of ``urls`` that is a registered source, by URL."""
    with store.translated("cannot read source states"):
        rows = await pool.fetch(_STATES, list(urls))
    return {
        r["url"]: SourceState(
            id=r["id"],
            url=r["url"],
            interval_s=r["interval_s"],
            etag=r["etag"],
            last_modified=r["last_modified"],
            content_hash=r["content_hash"],
            consecutive_failures=r["consecutive_failures"],
        )
        for r in rows
    }


# -- management (harvester sources ...) --------------------------------------------------------


def check_urls(urls: Iterable[str]) -> list[str]:
    """The distinct URLs of ``urls`` (stripped, blanks dropped), or `BadJobError` naming those
    that cannot be polled (not http(s), no host, spaces...)."""
    unique = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
    bad = [(u, p) for u in unique if (p := url_problem(u)) is not None]
    if bad:
        shown = "; ".join(f"{u!r} {p}" for u, p in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise BadJobError(f"{len(bad)} URL(s) cannot be polled: {shown}{more}")
    return unique


async def add(
    pool: asyncpg.Pool,
    urls: Iterable[str],
    *,
    every: float,
    name: str | None,
    auth: str | None = None,
) -> tuple[int, int]:
    """Register ``urls`` (or update their interval, name and credential profile ``auth``);
    return (added, updated).

    Raises `BadJobError` naming the URLs that cannot be polled (not http(s), no host...),
    before anything is registered.
    """
    unique = check_urls(urls)
    if not unique:
        return 0, 0
    with store.translated("cannot register sources"):
        rows = await pool.fetch(_UPSERT, unique, name, max(1, round(every)), auth)
    added = sum(1 for r in rows if r["inserted"])
    return added, len(rows) - added


def _targets(ids_or_urls: Sequence[str]) -> tuple[list[int], list[str]]:
    ids = [int(x) for x in ids_or_urls if x.isdigit()]
    urls = [x for x in ids_or_urls if not x.isdigit()]
    return ids, urls


_MATCH = """(id = ANY($1::bigint[])
    OR harvester_url_key(url) = ANY (SELECT harvester_url_key(u) FROM unnest($2::text[]) AS u))"""


async def set_enabled(pool: asyncpg.Pool, ids_or_urls: Sequence[str], enabled: bool) -> int:
    """Enable or disable sources given by id or URL; return how many matched."""
    sql = f"UPDATE sources SET enabled = $3 WHERE {_MATCH}"  # noqa: S608 - a constant
    return await _change(pool, "cannot change sources", sql, ids_or_urls, enabled)


async def remove(pool: asyncpg.Pool, ids_or_urls: Sequence[str]) -> int:
    """Delete sources given by id or URL (their documents stay); return how many."""
    sql = f"DELETE FROM sources WHERE {_MATCH}"  # noqa: S608 - a constant
    return await _change(pool, "cannot remove sources", sql, ids_or_urls)


async def _change(
    pool: asyncpg.Pool, what: str, sql: str, ids_or_urls: Sequence[str], *more: object
) -> int:
    ids, urls = _targets(ids_or_urls)
    with store.translated(what):
        return store.rows_affected(await pool.execute(sql, ids, urls, *more))


async def list_sources(
    pool: asyncpg.Pool, *, name: str | None = None, limit: int = 1000
) -> list[SourceRow]:
    """Registered sources, oldest first."""
    with store.translated("cannot list sources"):
        rows = await pool.fetch(_LIST, name, limit)
    return [SourceRow(**dict(r)) for r in rows]
