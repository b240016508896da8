"""The webhook outbox: a row per finished job that asked to be told (sql/013_webhooks.sql).

`finish` ends a job in Postgres, in one transaction fenced by the run's lease: it writes the
job's outbox row when the job has a ``notify_url`` (``ON CONFLICT (job_id) DO NOTHING``), and
``pg_notify('harvester', job_id)`` for every job. The row is written by the run that ends the
job, after its last chunk landed; a crash in between loses nothing, because a job runs again
until it completes (arq's retries), and a run that finds every URL landed completes at once and
writes it then. The body's counts are read from the job's rows in that transaction, so they
are the job's, not only its last run's.

Delivery (`worker.engine.webhooks`) claims due rows (`claim`, ``FOR UPDATE SKIP LOCKED``: the
claim moves ``next_attempt_at`` past the attempt's end, so no two workers deliver one row at
once and a killed worker's claim lapses by itself) and records each attempt (`settle`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import orjson

from worker.engine import leases
from worker.engine.leases import JobLease
from worker.engine.store import ACQUIRE_TIMEOUT_S, rows_affected, transaction, translated

CHANNEL = "harvester"  # pg_notify's channel: the payload is the finished job's id
Status = Literal["complete", "abandoned"]

_COUNTS = """
SELECT (SELECT count(*) FROM documents WHERE job_id = $1),
       (SELECT COALESCE(jsonb_object_agg(error, n), '{}'::jsonb)
          FROM (SELECT error, count(*) AS n FROM fetch_failures WHERE job_id = $1
                GROUP BY error) AS f)
"""

_INSERT = """
INSERT INTO webhook_outbox (job_id, url, body) VALUES ($1, $2, $3)
ON CONFLICT (job_id) DO NOTHING
"""

_NOTIFY = "SELECT pg_notify($1, $2)"

_CLAIM = """
UPDATE webhook_outbox AS o
SET next_attempt_at = now() + make_interval(secs => $2),
    attempts = o.attempts + 1,
    last_attempt_at = now()
FROM (SELECT id FROM webhook_outbox
      WHERE state = 'pending' AND next_attempt_at <= now()
      ORDER BY next_attempt_at LIMIT $1
      FOR UPDATE SKIP LOCKED) AS due
WHERE o.id = due.id
RETURNING o.id, o.delivery_id, o.url, o.body, o.attempts,
          extract(epoch FROM now() - o.pending_since) AS age
"""

# Only the claim that made this attempt records it: a lapsed claim taken again has more attempts.
_DELIVERED = """
UPDATE webhook_outbox SET state = 'delivered', delivered_at = now(), last_status = $3,
    last_error = NULL
WHERE id = $1 AND attempts = $2 AND state = 'pending'
"""

_RETRY = """
UPDATE webhook_outbox SET next_attempt_at = now() + make_interval(secs => $3), last_status = $4,
    last_error = $5
WHERE id = $1 AND attempts = $2 AND state = 'pending'
"""

_GIVE_UP = """
UPDATE webhook_outbox SET state = 'failed', last_status = $3, last_error = $4
WHERE id = $1 AND attempts = $2 AND state = 'pending'
"""

_LIST = """
SELECT id, job_id, delivery_id, url, state, attempts, created_at, last_attempt_at, delivered_at,
       last_status, last_error
FROM webhook_outbox WHERE ($1::text IS NULL OR state = $1)
ORDER BY id DESC LIMIT $2
"""

_REDELIVER = """
UPDATE webhook_outbox SET state = 'pending', next_attempt_at = now(), pending_since = now()
WHERE state = 'failed' AND ($1::bigint IS NULL OR id = $1)
"""


@dataclass(frozen=True, slots=True)
class Finished:
    """How a job ended, for its outbox row: what `finish` needs besides the job's rows."""

    job_id: str
    source: str | None
    status: Status
    urls: int
    notify_url: str | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """A claimed delivery: this attempt (``attempt``) of one outbox row."""

    id: int
    delivery_id: uuid.UUID
    url: str
    body: bytes
    attempt: int
    age: float  # seconds since the row became pending


@dataclass(frozen=True, slots=True)
class Delivery:
    """An outbox row as ``harvester webhooks list`` shows it (never the body's secret: there is
    none in it; the signature is made at each attempt and never stored)."""

    id: int
    job_id: str
    delivery_id: str
    url: str
    state: str
    attempts: int
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status: int | None
    last_error: str | None


def body_of(job: Finished, documents: int, failures: dict[str, int], at: datetime) -> bytes:
    """The webhook's JSON body, as sent and signed."""
    return orjson.dumps(
        {
            "job_id": job.job_id,
            "source": job.source,
            "status": job.status,
            "documents": documents,
            "failures": failures,
            "urls": job.urls,
            "finished_at": at.isoformat(),
        }
    )


async def finish(pool: asyncpg.Pool, job: Finished, lease: JobLease | None) -> None:
    """End ``job`` in Postgres: its outbox row when it has a ``notify_url``, and
    ``pg_notify('harvester', job_id)``, in one transaction that first checks ``lease``.
    Raises `StoreError`, or `LeaseLostError` when a newer run holds the job."""
    with translated("cannot record the job's end"):
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, transaction(conn):
            if lease is not None:
                await leases.check(conn, lease)
            if job.notify_url is not None:
                counts = await conn.fetchrow(_COUNTS, job.job_id)
                assert counts is not None  # one row, always
                body = body_of(job, counts[0], counts[1], datetime.now(UTC))
                await conn.execute(_INSERT, job.job_id, job.notify_url, body.decode())
            await conn.execute(_NOTIFY, CHANNEL, job.job_id)


async def claim(pool: asyncpg.Pool, limit: int, hold_s: float) -> list[Due]:
    """Up to ``limit`` due deliveries, each claimed for ``hold_s`` seconds. Raises `StoreError`."""
    with translated("cannot claim webhook deliveries"):
        rows = await pool.fetch(_CLAIM, limit, hold_s, timeout=ACQUIRE_TIMEOUT_S)
    return [
        Due(r["id"], r["delivery_id"], r["url"], r["body"].encode(), r["attempts"], float(r["age"]))
        for r in rows
    ]


async def settle(
    pool: asyncpg.Pool,
    due: Due,
    *,
    delivered: bool,
    status: int | None,
    error: str | None,
    retry_in: float | None,
) -> None:
    """Record ``due``'s attempt: delivered, retried in ``retry_in`` seconds, or (None) given up.
    Raises `StoreError`."""
    with translated("cannot record a webhook attempt"):
        if delivered:
            await pool.execute(_DELIVERED, due.id, due.attempt, status)
        elif retry_in is not None:
            await pool.execute(_RETRY, due.id, due.attempt, retry_in, status, error)
        else:
            await pool.execute(_GIVE_UP, due.id, due.attempt, status, error)


async def list_deliveries(pool: asyncpg.Pool, *, state: str | None, limit: int) -> list[Delivery]:
    """The outbox's rows, newest first, of one ``state`` or all. Raises `StoreError`."""
    with translated("cannot list webhook deliveries"):
        rows = await pool.fetch(_LIST, state, limit)
    return [Delivery(**{**dict(r), "delivery_id": str(r["delivery_id"])}) for r in rows]


async def redeliver(pool: asyncpg.Pool, ids: Sequence[int] | None) -> int:
    """Make failed deliveries (those of ``ids``, or all when None) due again, with a fresh
    HARVESTER_WEBHOOK_MAX_AGE; return how many. Raises `StoreError`."""
    with translated("cannot redeliver webhooks"):
        if ids is None:
            return rows_affected(await pool.execute(_REDELIVER, None))
        return sum([rows_affected(await pool.execute(_REDELIVER, i)) for i in ids])
