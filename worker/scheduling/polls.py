"""Polling registered sources: claiming the due ones, enqueueing their polls, and loading their
state for a poll job.

The cron task `jobs.poll_sources` calls `enqueue_due`. It claims due sources with
``FOR UPDATE SKIP LOCKED``, so workers running the cron at once never claim the same source,
and enqueues them as ordinary `fetch_batch` jobs with ``scheduled: true`` before it commits. A
run cut short (SIGTERM, a lost connection) rolls its claim back and the sources stay due; a job
it had already enqueued has an id derived from the sources and their due time, so the next
run's enqueue of the same poll is a no-op in arq. Sources are registered in
`worker.scheduling.sources`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from worker.engine import store
from worker.engine.polling import SourceState
from worker.engine.requests import canonical_json
from worker.errors import StoreError
from worker.queue.client import submit
from worker.queue.payload import FetchBatch
from worker.queue.shapes import Paginate, Records, RequestSpec
from worker.settings import Settings

# How long a claimed source is left to its poll job before another cron run may claim it again
# (a job lost with its queue); at least this, and several job timeouts.
CLAIM_LEASE_MIN_S = 3600.0
_MAX_REENQUEUE = 100

_DUE = """
SELECT id, url, name, auth, method, body, headers, paginate, records, notify_url, next_due_at
FROM sources
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
SELECT id, url, interval_s, etag, last_modified, content_hash, consecutive_failures,
       since_param, since_path, since_value
FROM sources
WHERE harvester_url_key(url) = ANY (SELECT harvester_url_key(u) FROM unnest($1::text[]) AS u)
"""


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
    credential profile (and paginate, records and notify_url) per job.
    """
    jobs: list[str] = []
    with store.translated("cannot claim due sources"):
        async with pool.acquire() as conn, store.transaction(conn):
            due = await conn.fetch(_DUE, settings.sources_claim_limit)
            groups: dict[_Group, list[asyncpg.Record]] = {}
            for r in due:
                groups.setdefault(_group(r), []).append(r)
            step = settings.sources_batch_size
            for (name, auth, _, _, notify_url), rows in groups.items():
                for i in range(0, len(rows), step):
                    chunk = rows[i : i + step]
                    first = rows[0]
                    batch = poll_batch(
                        chunk,
                        source=name,
                        auth=auth,
                        paginate=first["paginate"],
                        records=first["records"],
                        notify_url=notify_url,
                    )
                    # Enqueued before the claim commits: should the commit not happen, the
                    # sources stay due and the next run's enqueue of this same id is a no-op.
                    job_id = await _enqueue(redis, poll_job_id(chunk), batch)
                    await conn.execute(
                        _CLAIM, [r["id"] for r in chunk], job_id, claim_lease(settings)
                    )
                    jobs.append(job_id)
    return Enqueued(len(due), tuple(jobs))


_Group = tuple[str | None, str | None, bytes | None, bytes | None, str | None]


def _group(r: asyncpg.Record) -> _Group:
    """What the sources of one poll job share: name, credential profile, paginate, records
    and notify_url (the fields a job has for all its requests)."""
    paginate = None if r["paginate"] is None else canonical_json(r["paginate"])
    records = None if r["records"] is None else canonical_json(r["records"])
    return (r["name"], r["auth"], paginate, records, r["notify_url"])


def poll_batch(
    rows: Sequence[asyncpg.Record],
    *,
    source: str | None,
    auth: str | None,
    paginate: Mapping[str, Any] | None = None,
    records: Mapping[str, Any] | None = None,
    notify_url: str | None = None,
) -> FetchBatch:
    """The scheduled batch that polls ``rows``: ``urls`` when every one is a plain GET (the
    form every worker version reads), else ``requests`` with each source's method, body and
    headers; ``paginate`` walks each one's pages; ``records`` extracts their records;
    ``notify_url`` is told when the poll job ends."""
    shared: dict[str, Any] = {"source": source, "scheduled": True, "auth": auth}
    if notify_url is not None:
        shared["notify_url"] = notify_url
    if paginate is not None:
        shared["paginate"] = Paginate.model_validate(paginate)
    if records is not None:
        shared["records"] = Records.model_validate(records)
    if all(r["method"] == "GET" and r["body"] is None and not r["headers"] for r in rows):
        return FetchBatch(urls=[r["url"] for r in rows], **shared)
    requests = [
        RequestSpec.model_validate(
            {"url": r["url"], "method": r["method"], "json": r["body"], "headers": r["headers"]}
        )
        for r in rows
    ]
    return FetchBatch(requests=requests, **shared)


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
            since_param=r["since_param"],
            since_path=r["since_path"],
            since_value=r["since_value"],
        )
        for r in rows
    }
