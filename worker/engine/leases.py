"""Job leases: the fence that keeps a run of a job that lost it from landing anything more.

Each run of a job takes the job's lease (`take`, a row of ``job_leases``: sql/010_job_leases.sql),
which raises its epoch and names a new run. Every transaction that lands the job's rows first
checks, inside that transaction, that its run still holds the lease (`check`: ``SELECT ... FOR
SHARE``). A newer run's `take` waits for such a transaction to commit or roll back, and once it
has taken the lease, an older run's next check fails with `LeaseLostError`: so a worker that was
only stalled (SIGSTOP, a frozen VM) and resumes after its job went to another worker commits
nothing more. A row lock checked in each write transaction holds behind pgbouncer in transaction
mode too, where a session's advisory lock would not.

The engine never sees who decides a takeover (the runtime, through Redis): a run's lease is a
value passed in with its batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from worker.engine.store import ACQUIRE_TIMEOUT_S, Conn, translated
from worker.errors import LeaseLostError

_TAKE = """
INSERT INTO job_leases AS l (job_id, run, epoch, owner) VALUES ($1, $2, 1, $3)
ON CONFLICT (job_id) DO UPDATE
    SET run = EXCLUDED.run, epoch = l.epoch + 1, owner = EXCLUDED.owner, taken_at = now()
RETURNING epoch
"""

# FOR SHARE: concurrent chunks of one run share the lock; a newer run's `take` waits for them.
_CHECK = "SELECT epoch FROM job_leases WHERE job_id = $1 AND run = $2 FOR SHARE"

_RELEASE = "DELETE FROM job_leases WHERE job_id = $1 AND run = $2"


@dataclass(frozen=True, slots=True)
class JobLease:
    """A run's hold on its job: valid while the job's lease row names this run."""

    job_id: str
    run: uuid.UUID
    epoch: int
    owner: str


async def take(pool: asyncpg.Pool, job_id: str, owner: str) -> JobLease:
    """Take ``job_id``'s lease for a new run by ``owner``: every earlier run loses it.
    Raises `StoreError`."""
    run = uuid.uuid4()
    with translated("cannot take the job's lease"):
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            epoch = await conn.fetchval(_TAKE, job_id, run, owner)
    return JobLease(job_id, run, int(epoch), owner)


async def check(conn: Conn, lease: JobLease) -> None:
    """Inside a transaction: raise `LeaseLostError` unless ``lease`` still holds its job, and
    keep it held until the transaction ends."""
    if await conn.fetchval(_CHECK, lease.job_id, lease.run) is None:
        raise LeaseLostError(
            f"job {lease.job_id}: run {lease.epoch} by {lease.owner} lost its lease to a newer run"
        )


async def release(pool: asyncpg.Pool, lease: JobLease) -> None:
    """Drop the lease of a run that ended the job (a no-op if a newer run holds it).
    Raises `StoreError`."""
    with translated("cannot release the job's lease"):
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            await conn.execute(_RELEASE, lease.job_id, lease.run)
