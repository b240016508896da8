"""What the dashboard draws beside `worker.ops.status.gather`'s snapshot: URLs landed per minute,
by outcome and failure kind (`history`), and how far each running job is (`progress`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import orjson
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import DeserializationError, deserialize_job

from worker.engine import store
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


async def progress(redis: ArqRedis, pool: asyncpg.Pool, job_ids: list[str]) -> list[Progress]:
    """The progress of ``job_ids`` (`Status.in_progress`): totals from the jobs in Redis,
    outcomes landed from Postgres."""
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
        Progress(job_id, _total(data), landed.get(job_id, 0))
        for job_id, data in zip(job_ids, raw, strict=True)
    ]


def _total(raw: bytes | None) -> int | None:
    """The number of distinct URLs or requests of a stored fetch_batch job: a request given
    twice gets one outcome, so it counts once (`distinct`)."""
    if raw is None:
        return None
    try:
        job = deserialize_job(raw, deserializer=deserialize)
    except DeserializationError:
        return None
    for name in ("urls", "requests"):
        items = job.kwargs.get(name)
        if isinstance(items, list):
            return distinct(items)
    return None


def distinct(items: list[Any]) -> int:
    """How many outcomes a job's ``urls`` or ``requests`` make: URLs as given, requests by URL,
    method and body (headers are not part of a request's identity)."""
    keys = set()
    for item in items:
        if isinstance(item, dict):
            body = item.get("json")
            shape = None if body is None else orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
            item = (item.get("url"), item.get("method"), shape)
        try:
            keys.add(item)
        except TypeError:  # not a job the worker would take: count it as given
            return len(items)
    return len(keys)
