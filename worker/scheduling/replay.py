"""Failure replay: list ``fetch_failures`` rows and retry some of them as new `fetch_batch` jobs.

A replay never rewrites what the original job recorded. It creates a new job
``replay-<16 hex>`` with the failures' source and credential profile (``fetch_failures.auth``,
the profile's name: a worker that no longer has that profile refuses the job, as any job naming
an unknown one), records it in ``replays`` with its *generation* (1 for a replay of first-time
failures, n + 1 for a replay of a generation-n replay's failures) and links each retried row to
it through ``fetch_failures.replayed_by`` (and ``replayed_at``). A row with ``replayed_by`` set
is never replayed again. The new job's outcomes land under its own id, so
what became of each replayed failure is::

    SELECT f.url, f.error, d.status
    FROM fetch_failures f LEFT JOIN documents d
      ON d.job_id = f.replayed_by AND harvester_url_key(d.url) = harvester_url_key(f.url)
    WHERE f.replayed_by IS NOT NULL

Several workers or cron runs may replay at once: candidates are locked ``FOR UPDATE SKIP
LOCKED``, and a job's ``replays`` row and links commit in one transaction before the job is
enqueued. ``replays.enqueued_at`` stays NULL until Redis has the job; every call first
re-enqueues such rows older than `OUTBOX_GRACE_S` (an outbox), so a crash between commit and
enqueue loses nothing. The job id makes a second enqueue a no-op.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import asyncpg
from arq.connections import ArqRedis

from worker.engine import store
from worker.errors import TRANSIENT_KINDS, TRANSIENT_STATUSES
from worker.queue.client import submit
from worker.queue.payload import FetchBatch

log = logging.getLogger("harvester.replay")

# The replay rule over ``fetch_failures f``, written from the one definition of transient
# (`worker.errors`); tests check that the two agree row for row.
TRANSIENT_SQL: Final = f"""(
    f.error IN ({", ".join(f"'{k}'" for k in TRANSIENT_KINDS)})
    OR (f.error = 'http_status' AND f.status IN ({", ".join(map(str, sorted(TRANSIENT_STATUSES)))}))
)"""

# A replays row not enqueued after this long was orphaned by a crash. Long enough that a live
# caller between its commit and its enqueue is never raced.
OUTBOX_GRACE_S: Final = 60.0
OUTBOX_BATCH: Final = 100
# Who asked for a replay (``replays.reason``): the command line, the replay cron, the dashboard.
REASONS: Final = ("cli", "cron", "api")

# The host of a URL as stored (no userinfo, no port), for the list's host filter.
HOST_SQL: Final = (
    r"lower(substring(url from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#@]*@)?(\[[^]]*\]|[^/?#:]*)'))"
)

_LIST = f"""
SELECT id, job_id, url, source, auth, error, status, attempts, detail, failed_at, replayed_by
FROM fetch_failures
WHERE ($1::text IS NULL OR job_id = $1)
  AND ($2::text[] IS NULL OR error = ANY($2::text[]))
  AND ($3::timestamptz IS NULL OR failed_at >= $3)
  AND ($5::text IS NULL OR {HOST_SQL} = lower($5))
ORDER BY failed_at DESC, id DESC
LIMIT $4
"""  # noqa: S608 - a constant fragment; values are parameters

# Candidates for a replay. Parameters: $1 kinds, $2 transient only, $3 since, $4 job id,
# $5 older than (s), $6 max generation, $7 row ids; a NULL filter (or false $2) lets every row
# through.
# The queries below are put together from constant fragments only; values are parameters.
_CANDIDATES = f"""
FROM fetch_failures f LEFT JOIN replays r ON r.job_id = f.job_id
WHERE f.replayed_by IS NULL
  -- Only GETs without a body: other requests are not stored whole (see the docstring).
  AND f.method = 'GET' AND f.body_hash IS NULL
  AND f.page IS NULL  -- a page of a walk: its job's paginate is not kept, so not replayable
  AND ($1::text[] IS NULL OR f.error = ANY($1))
  AND (NOT $2::boolean OR {TRANSIENT_SQL})
  AND ($3::timestamptz IS NULL OR f.failed_at >= $3)
  AND ($4::text IS NULL OR f.job_id = $4)
  AND ($5::float8 IS NULL OR f.failed_at <= now() - make_interval(secs => $5))
  AND ($6::integer IS NULL OR COALESCE(r.generation, 0) <= $6)
  AND ($7::bigint[] IS NULL OR f.id = ANY($7::bigint[]))
"""

_PLAN = f"""
SELECT f.url, f.source, f.auth, COALESCE(r.generation, 0) AS generation {_CANDIDATES}
ORDER BY f.failed_at, f.id LIMIT $8
"""

# The oldest unlocked candidate picks the group (source, generation, auth) of the next job...
_CLAIM_FIRST = f"""
SELECT f.source, f.auth, COALESCE(r.generation, 0) AS generation {_CANDIDATES}
ORDER BY f.failed_at, f.id LIMIT 1
FOR UPDATE OF f SKIP LOCKED
"""

# ... and up to $11 candidates of that group are locked with it (our own lock is not skipped).
_CLAIM_GROUP = f"""
SELECT f.id, f.url {_CANDIDATES}
  AND f.source IS NOT DISTINCT FROM $8::text AND COALESCE(r.generation, 0) = $9
  AND f.auth IS NOT DISTINCT FROM $10::text
ORDER BY f.failed_at, f.id LIMIT $11
FOR UPDATE OF f SKIP LOCKED
"""  # noqa: S608 - constant fragments only; values are parameters

_INSERT_REPLAY = """
INSERT INTO replays (job_id, generation, urls, source, auth, reason)
VALUES ($1, $2, $3, $4, $5, $6)
"""

_LINK = """
UPDATE fetch_failures SET replayed_by = $1, replayed_at = now() WHERE id = ANY($2::bigint[])
"""

_MARK_ENQUEUED = "UPDATE replays SET enqueued_at = now() WHERE job_id = $1"

_OUTBOX = """
SELECT job_id, source, auth FROM replays
WHERE enqueued_at IS NULL AND created_at < now() - make_interval(secs => $1::float8)
ORDER BY created_at LIMIT $2
"""

_OUTBOX_URLS = "SELECT url FROM fetch_failures WHERE replayed_by = $1 ORDER BY id"


# The candidate filters in _CANDIDATES' parameter order ($1 to $7).
_Filters = tuple[
    list[str] | None, bool, datetime | None, str | None, float | None, int | None, list[int] | None
]


@dataclass(frozen=True, slots=True)
class FailureRow:
    """One ``fetch_failures`` row as listed."""

    id: int
    job_id: str
    url: str
    source: str | None
    auth: str | None  # the credential profile's name, never a secret
    error: str
    status: int | None
    attempts: int
    detail: str
    failed_at: datetime
    replayed_by: str | None


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did: the new job ids and the distinct URLs they carry.

    ``batches`` is the number of jobs made, or with ``dry_run`` (``jobs`` empty) that would
    have been; ``recovered`` counts outbox jobs re-enqueued first.
    """

    jobs: list[str] = field(default_factory=list)
    urls: int = 0
    batches: int = 0
    recovered: int = 0


def _check_aware(name: str, value: datetime | None) -> None:
    # asyncpg would read a naive datetime as UTC; refuse it rather than guess.
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware, got {value.isoformat()}")


async def list_failures(
    pool: asyncpg.Pool,
    *,
    job_id: str | None = None,
    kinds: Sequence[str] | None = None,
    since: datetime | None = None,
    host: str | None = None,
    limit: int = 100,
) -> list[FailureRow]:
    """Failure rows matching every given filter, newest first, at most ``limit``. ``kinds``:
    rows of any of these error kinds; ``host``: URLs on this host (any port, any case)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    _check_aware("since", since)
    with store.translated("cannot list failures"):
        rows = await pool.fetch(_LIST, job_id, list(kinds) if kinds else None, since, limit, host)
    return [FailureRow(**dict(r)) for r in rows]


def _check_arguments(*, batch_size: int, limit: int, reason: str, older_than: float | None) -> None:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
    if older_than is not None and older_than < 0:
        raise ValueError("older_than must not be negative")


async def replay_failures(
    pool: asyncpg.Pool,
    redis: ArqRedis,
    *,
    kinds: Sequence[str] | None = None,
    transient_only: bool = False,
    since: datetime | None = None,
    job_id: str | None = None,
    older_than: float | None = None,
    max_generation: int | None = None,
    ids: Sequence[int] | None = None,
    reason: str = "cli",
    batch_size: int,
    limit: int,
    dry_run: bool = False,
) -> ReplayResult:
    """Replay up to ``limit`` not yet replayed failures matching every filter as new jobs.

    Failures are grouped by (source, generation, auth), oldest first, into jobs of at most
    ``batch_size`` rows; a URL appears once per job. ``older_than`` is seconds since
    ``failed_at``; ``max_generation`` keeps failures of that generation or lower (0: failures of
    jobs that are not replays); ``ids`` keeps these rows only (a selection made by hand).
    ``dry_run`` only reads. Raises `StoreError` when Postgres fails;
    a Redis error after a commit propagates, and a later call's outbox enqueues that job.
    """
    _check_arguments(batch_size=batch_size, limit=limit, reason=reason, older_than=older_than)
    _check_aware("since", since)
    filters = (
        list(kinds) if kinds else None,
        transient_only,
        since,
        job_id,
        None if older_than is None else float(older_than),
        max_generation,
        list(ids) if ids is not None else None,
    )
    if dry_run:
        return await _plan(pool, filters, batch_size=batch_size, limit=limit)

    recovered = await recover_outbox(pool, redis)
    jobs: list[str] = []
    urls = 0
    taken = 0
    while taken < limit:
        claimed = await _claim(
            pool, filters, batch_size=min(batch_size, limit - taken), reason=reason
        )
        if claimed is None:
            break
        taken += claimed.rows
        await _enqueue(pool, redis, claimed.job_id, claimed.job)
        jobs.append(claimed.job_id)
        urls += len(claimed.job.urls or ())
    if jobs:
        log.info("replay.enqueued", extra={"jobs": len(jobs), "urls": urls, "reason": reason})
    return ReplayResult(jobs=jobs, urls=urls, batches=len(jobs), recovered=recovered)


async def _plan(
    pool: asyncpg.Pool, filters: _Filters, *, batch_size: int, limit: int
) -> ReplayResult:
    """The jobs a replay would make now, read without locks."""
    with store.translated("cannot read failures"):
        rows = await pool.fetch(_PLAN, *filters, limit)
    groups: dict[tuple[str | None, int, str | None], list[str]] = {}
    for r in rows:
        groups.setdefault((r["source"], r["generation"], r["auth"]), []).append(r["url"])
    batches = urls = 0
    for group in groups.values():
        for i in range(0, len(group), batch_size):
            batches += 1
            urls += len(dict.fromkeys(group[i : i + batch_size]))
    return ReplayResult(jobs=[], urls=urls, batches=batches)


@dataclass(frozen=True, slots=True)
class _Claimed:
    """One replay job committed to Postgres, to be enqueued: ``rows`` failure rows claimed."""

    job_id: str
    job: FetchBatch
    rows: int


async def _claim(
    pool: asyncpg.Pool, filters: _Filters, *, batch_size: int, reason: str
) -> _Claimed | None:
    """Claim one job's failures in one short transaction."""
    with store.translated("cannot claim failures for replay"):
        async with (
            pool.acquire(timeout=store.ACQUIRE_TIMEOUT_S) as conn,
            store.transaction(conn),
        ):
            first = await conn.fetchrow(_CLAIM_FIRST, *filters)
            if first is None:
                return None
            source: str | None = first["source"]
            auth: str | None = first["auth"]
            generation: int = first["generation"]
            rows = await conn.fetch(_CLAIM_GROUP, *filters, source, generation, auth, batch_size)
            urls = list(dict.fromkeys(r["url"] for r in rows))
            new_job = f"replay-{uuid.uuid4().hex[:16]}"
            await conn.execute(
                _INSERT_REPLAY, new_job, generation + 1, len(urls), source, auth, reason
            )
            await conn.execute(_LINK, new_job, [r["id"] for r in rows])
    return _Claimed(new_job, _job(urls, source, auth), len(rows))


def _job(urls: list[str], source: str | None, auth: str | None) -> FetchBatch:
    """A replay's job: its failures' URLs, with their source and credential profile name."""
    return FetchBatch(urls=urls, source=source, auth=auth)


async def _enqueue(pool: asyncpg.Pool, redis: ArqRedis, job_id: str, job: FetchBatch) -> None:
    """Hand the job to Redis, then mark its replays row enqueued."""
    # arq returns None when the id is queued, running or has a result: enqueued already.
    await submit(redis, job, job_id)
    with store.translated("cannot mark a replay enqueued"):
        await pool.execute(_MARK_ENQUEUED, job_id)


async def recover_outbox(pool: asyncpg.Pool, redis: ArqRedis) -> int:
    """Enqueue replays committed but never handed to Redis (a crash between); return how many.

    Only rows older than `OUTBOX_GRACE_S` are taken, so a caller about to enqueue its own job
    is not raced; were it raced, arq would refuse the second enqueue of the same id anyway.
    """
    with store.translated("cannot read the replay outbox"):
        pending = await pool.fetch(_OUTBOX, OUTBOX_GRACE_S, OUTBOX_BATCH)
    recovered = 0
    for row in pending:
        job_id: str = row["job_id"]
        with store.translated("cannot read the replay outbox"):
            url_rows = await pool.fetch(_OUTBOX_URLS, job_id)
            urls = list(dict.fromkeys(r["url"] for r in url_rows))
            if not urls:
                # Its failure rows are gone (retention): nothing is left to run.
                log.warning("replay.outbox_empty", extra={"replay_job_id": job_id})
                await pool.execute(_MARK_ENQUEUED, job_id)
                continue
        await _enqueue(pool, redis, job_id, _job(urls, row["source"], row["auth"]))
        log.info("replay.recovered", extra={"replay_job_id": job_id, "urls": len(urls)})
        recovered += 1
    return recovered
