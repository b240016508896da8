"""What the dashboard draws beside `worker.ops.status.gather`'s snapshot: URLs landed per minute,
by outcome and failure kind (`history`), and how far each running job is (`progress`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import DeserializationError, deserialize_job
from pydantic import ValidationError

from worker.engine import store
from worker.queue.payload import FetchBatch
from worker.queue.serialization import deserialize

HISTORY_MINUTES = 60
MAX_HISTORY_MINUTES = 24 * 60


_DOCUMENTS_PER_MINUTE = """
SELECT extract(epoch FROM date_trunc('minute', fetched_at))::bigint AS minute, count(*) AS n
FROM documents WHERE fetched_at >= date_trunc('minute', now()) - make_interval(mins => $1)
GROUP BY 1
"""

_FAILURES_PER_MINUTE = """
SELECT extract(epoch FROM date_trunc('minute', failed_at))::bigint AS minute, error, count(*) AS n
FROM fetch_failures WHERE failed_at >= date_trunc('minute', now()) - make_interval(mins => $1)
GROUP BY 1, 2
"""

# The first page of each request (a walk's later pages are not URLs of the job), per job.
_JOB_LANDED = """
SELECT job_id, sum(n)::bigint AS n FROM (
    SELECT job_id, count(*) AS n FROM documents
    WHERE job_id = ANY($1::text[]) AND COALESCE(page, 1) = 1 GROUP BY job_id
    UNION ALL
    SELECT job_id, count(*) FROM fetch_failures
    WHERE job_id = ANY($1::text[]) AND COALESCE(page, 1) = 1 GROUP BY job_id
) o GROUP BY job_id
"""


@dataclass(frozen=True, slots=True)
class History:
    """URLs landed per minute over the last ``len(minutes)`` minutes, oldest first: the
    minutes (Unix seconds, UTC), documents, and failures by kind (one count per minute)."""

    minutes: list[int]
    documents: list[int]
    failures: dict[str, list[int]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def history(pool: asyncpg.Pool, minutes: int = HISTORY_MINUTES) -> History:
    """Throughput by outcome and failures by kind, per minute, over the last ``minutes``
    minutes (the current one included); minutes without rows count zero."""
    if not 1 <= minutes <= MAX_HISTORY_MINUTES:
        raise ValueError(f"minutes must be from 1 to {MAX_HISTORY_MINUTES}, not {minutes}")
    with store.translated("cannot read the history from Postgres"):
        async with pool.acquire() as conn:
            now = await conn.fetchval(
                "SELECT extract(epoch FROM date_trunc('minute', now()))::bigint"
            )
            docs = await conn.fetch(_DOCUMENTS_PER_MINUTE, minutes - 1)
            fails = await conn.fetch(_FAILURES_PER_MINUTE, minutes - 1)
    axis = [now - 60 * (minutes - 1 - n) for n in range(minutes)]
    index = {minute: n for n, minute in enumerate(axis)}
    documents = [0] * minutes
    for r in docs:
        if r["minute"] in index:
            documents[index[r["minute"]]] = r["n"]
    failures: dict[str, list[int]] = {}
    for r in fails:
        if r["minute"] in index:
            failures.setdefault(r["error"], [0] * minutes)[index[r["minute"]]] = r["n"]
    return History(minutes=axis, documents=documents, failures=dict(sorted(failures.items())))


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running job is: URLs (requests) it carries, and how many have an outcome."""

    job_id: str
    total: int | None  # None: the job is gone from Redis, or is not a fetch_batch
    landed: int


class JobTotals:
    """The totals of the jobs `progress` has read, by (job id, enqueue time): a payload does not
    change while its job is queued or running, and validating a batch of 10,000 requests takes
    about 0.1 s of the API's event loop, too much for every poll of every running job. One per
    API process (the dashboard's), the newest `KEPT` pairs at most."""

    KEPT: Final = 1024

    def __init__(self) -> None:
        self._totals: dict[tuple[str, datetime], int | None] = {}

    def of(self, job_id: str, raw: bytes | None) -> int | None:
        """The number of outcomes the stored fetch_batch job ``raw`` makes (`distinct`); None
        when it is gone or is no fetch_batch."""
        if raw is None:
            return None
        try:
            job = deserialize_job(raw, deserializer=deserialize)
        except DeserializationError:
            return None
        key = (job_id, job.enqueue_time)
        if key not in self._totals:
            if len(self._totals) >= self.KEPT:
                self._totals.clear()
            self._totals[key] = distinct(job.kwargs)
        return self._totals[key]


async def progress(
    redis: ArqRedis, pool: asyncpg.Pool, job_ids: list[str], totals: JobTotals
) -> list[Progress]:
    """The progress of ``job_ids`` (`Status.in_progress`): totals from the jobs in Redis (read
    through ``totals``), outcomes landed from Postgres."""
    if not job_ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.get(job_key_prefix + job_id)
        raw: list[bytes | None] = await pipe.execute()
    with store.translated("cannot count the rows landed"):
        rows = await pool.fetch(_JOB_LANDED, job_ids)
    landed = {r["job_id"]: r["n"] for r in rows}
    return [
        Progress(job_id, totals.of(job_id, data), landed.get(job_id, 0))
        for job_id, data in zip(job_ids, raw, strict=True)
    ]


def distinct(kwargs: Mapping[str, Any]) -> int | None:
    """How many outcomes a job's arguments make: its distinct requests as the worker reads them
    (`FetchBatch`, `Request`'s identity: URL, method and body after the batch's defaults;
    headers aside). None for arguments the worker would refuse."""
    try:
        batch = FetchBatch.model_validate(kwargs)
    except ValidationError:
        return None
    return len(set(batch.requests_of()))
