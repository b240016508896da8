"""The jobs a worker refused, kept where `harvester status` and the dashboard find them.

A refused job (a batch the payload model rejects: an unknown credential profile, a forbidden header,
too many URLs) lands no row in Postgres, where status finds the other recent jobs; nor does a job
arq fails before it runs (not a valid job, an unknown function, expired, out of tries; a cron tick
is left out), and a crashed one may land only some. So the worker also adds the id of each to the
sorted set ``<queue>:rejected``, scored by the time it was refused, and keeps the newest `KEEP`; the
reason stays in arq's stored result, which status reads for every recent job. The set is a view for
people, not a record: a failure to write it is logged and the job is refused all the same.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("harvester.jobs")

KEEP: Final = 100  # rejected job ids kept per queue, the newest


def rejected_key(queue: str) -> str:
    """The sorted set of ``queue``'s refused job ids, scored by the unix time of refusal."""
    return f"{queue}:rejected"


async def record(redis: Redis, queue: str, job_id: str, *, now: float | None = None) -> None:
    """Add ``job_id`` to ``queue``'s refused jobs; never raises for Redis' trouble."""
    key = rejected_key(queue)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {job_id: time.time() if now is None else now})
            pipe.zremrangebyrank(key, 0, -KEEP - 1)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("job.rejection_not_listed", extra={"reason": type(exc).__name__})


async def since(redis: Redis, queue: str, cutoff: float) -> list[tuple[str, float]]:
    """(job id, unix time) of ``queue``'s jobs refused at or after ``cutoff``, newest first."""
    rows = await redis.zrevrangebyscore(rejected_key(queue), "+inf", cutoff, withscores=True)
    return [(job_id.decode(), score) for job_id, score in rows]
