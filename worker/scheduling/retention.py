"""Retention: delete documents, failures, record failures and finished webhook deliveries older
than a cutoff, a small batch at a time.

Each batch is one short ``DELETE ... WHERE id IN (SELECT id ... LIMIT n)`` transaction, so
retention never holds locks on many rows for long and never blocks the writers. A document that
is a registered source's current content (``sources.document_job_id``) is kept whatever its age:
it is what that source's next poll compares against; so is every request's current copy (the
document ``latest_document_refs`` points at), found by its primary key. Records are current
state, not history: they stay. A webhook still pending stays whatever its age (its own
HARVESTER_WEBHOOK_MAX_AGE gives it up).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime

import asyncpg

from worker.engine import store

log = logging.getLogger("harvester.retention")


# One clock for the whole run: rows that age past the cutoff while it runs wait for the next.
_CUTOFF = "SELECT now() - make_interval(secs => $1::float8)"

_DELETE_DOCUMENTS = """
DELETE FROM documents WHERE id IN (
    SELECT d.id FROM documents d
    WHERE d.fetched_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM sources s
          WHERE s.document_job_id = d.job_id
            AND harvester_url_key(s.url) = harvester_url_key(d.url)
      )
      AND NOT EXISTS (
          SELECT 1 FROM latest_document_refs l
          WHERE l.url_key = harvester_request_key(d.url, d.method, d.body_hash)
            AND l.page = COALESCE(d.page, 0)
            AND l.document_id = d.id
      )
    LIMIT $2
)
"""

_DELETE_FAILURES = """
DELETE FROM fetch_failures WHERE id IN (
    SELECT id FROM fetch_failures WHERE failed_at < $1 LIMIT $2
)
"""


# A record failure says why a document's records are missing: it stays while its document does
# (a kept current copy keeps the reason its records are not there).
_DELETE_RECORD_FAILURES = """
DELETE FROM record_failures WHERE id IN (
    SELECT f.id FROM record_failures f
    WHERE f.created_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM documents d
          WHERE d.job_id = f.job_id
            AND harvester_url_key(d.url) = harvester_url_key(f.url)
            AND COALESCE(d.page, 0) = COALESCE(f.page, 0)
      )
    LIMIT $2
)
"""

_DELETE_WEBHOOKS = """
DELETE FROM webhook_outbox WHERE id IN (
    SELECT id FROM webhook_outbox WHERE created_at < $1 AND state <> 'pending' LIMIT $2
)
"""


# A job's lease is deleted when its run ends; one a run could not delete (Postgres refused, a
# worker killed before a job's last try) is a leftover once it is older than the cutoff, days past
# any run. Deleting it is safe whatever the job does next: a run whose lease row is gone lands
# nothing more, and the job's next run takes a new one. The table holds live jobs only: small.
_DELETE_LEASES = """
DELETE FROM job_leases WHERE job_id IN (
    SELECT job_id FROM job_leases WHERE taken_at < $1 LIMIT $2
)
"""


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """Rows deleted by one retention run."""

    documents: int
    failures: int
    record_failures: int = 0
    webhooks: int = 0  # delivered or given-up deliveries
    leases: int = 0  # job leases left behind

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def _delete_batches(
    pool: asyncpg.Pool, sql: str, cutoff: datetime, batch_rows: int, what: str
) -> int:
    total = 0
    while True:
        with store.translated(f"cannot delete expired {what}"):
            n = store.rows_affected(await pool.execute(sql, cutoff, batch_rows))
        total += n
        if n < batch_rows:
            return total


async def delete_expired(pool: asyncpg.Pool, *, days: float, batch_rows: int) -> RetentionResult:
    """Delete documents fetched, failures and record failures recorded, webhook deliveries
    finished and job leases left behind more than ``days`` ago; return the counts.

    Raises `StoreError` when Postgres fails; batches already deleted stay deleted, and the next
    run carries on from there.
    """
    if days <= 0:
        raise ValueError("days must be positive")
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    with store.translated("cannot compute the retention cutoff"):
        cutoff: datetime = await pool.fetchval(_CUTOFF, days * 86_400.0)
    # Documents first: a record failure goes with its document (`_DELETE_RECORD_FAILURES`).
    documents = await _delete_batches(pool, _DELETE_DOCUMENTS, cutoff, batch_rows, "documents")
    failures = await _delete_batches(pool, _DELETE_FAILURES, cutoff, batch_rows, "failures")
    result = RetentionResult(
        documents=documents,
        failures=failures,
        record_failures=await _delete_batches(
            pool, _DELETE_RECORD_FAILURES, cutoff, batch_rows, "record failures"
        ),
        webhooks=await _delete_batches(pool, _DELETE_WEBHOOKS, cutoff, batch_rows, "webhooks"),
        leases=await _delete_batches(pool, _DELETE_LEASES, cutoff, batch_rows, "job leases"),
    )
    log.info("retention.deleted", extra={**result.as_dict(), "cutoff": cutoff.isoformat()})
    return result
