"""Which worker process holds which job, and the takeover of a dead worker's jobs.

arq keeps a job from running twice with its in-progress key, which lives job timeout + 10 s: a
SIGKILLed worker's job would wait that long (130 s by default) to run again. So each harvester
worker also records the jobs it runs in the hash ``<queue>:held`` (job id -> worker id): set as a
run starts (the worker's heartbeat exists by then) and released, only by the worker named there,
as the run ends. With every heartbeat, a live worker looks for held jobs whose owner's heartbeat
(`worker.queue.heartbeat`) is gone and takes them over in one script, which checks again that
the owner is still the holder and still dead, deletes arq's in-progress key so that any worker
may start the job at once, and puts the job back in the queue if it was no longer there. The
next start counts as a try (arq's retry key is left as it is), as after any interruption.

A worker restarted by its process manager often has its predecessor's id: a container's worker
runs as PID 1 with the same hostname after each restart, and beats under the same heartbeat key,
so the dead predecessor looks alive. Each worker therefore also takes over as it starts, whatever
the heartbeat says, the held jobs that name its own id but none of its own runs (`orphans`'
``worker`` and ``running``): no process but a predecessor can have written them.

A worker that was itself cut off from Redis (an outage, or its own stall) for more than about a
heartbeat interval cannot tell a dead worker from one that was cut off too and has not beaten
again yet: it takes nothing over for one heartbeat life after it beats again (`takeover_from`).

A worker that was only stalled (SIGSTOP) and resumes finds its entry gone: it leaves the job's
keys to the run that holds it now (`release` says so), and its writes are refused by the job's
lease in Postgres (`worker.engine.leases`).
"""

from __future__ import annotations

import secrets
from collections.abc import Collection
from typing import Any, cast

from arq.constants import in_progress_key_prefix, job_key_prefix
from arq.utils import timestamp_ms
from redis.asyncio import Redis

from worker.queue.heartbeat import beat_key, beat_ttl, held_key, hold_owner

# A gap between two of a worker's beats longer than this many intervals means it was cut off
# (Redis down, or its own loop stalled) long enough for other live workers' heartbeats to have
# expired too: a beat is normally one interval and a poll after the last.
CUT_OFF_INTERVALS = 1.5

# KEYS: held hash. ARGV: job id, hold. 1 if the run held the job (now released).
_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
    return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: held hash, owner's heartbeat, in-progress key, queue, job key.
# ARGV: job id, hold, now (ms), '1' for a predecessor's hold (its heartbeat is not consulted:
# the caller beats under the same key). 1 if the job was taken from its dead owner.
_TAKE_OVER = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[4] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[5]) == 1 and not redis.call('ZSCORE', KEYS[4], ARGV[1]) then
    redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
end
return 1
"""


def hold_value(worker: str) -> str:
    """A new run's hold: ``<worker id> <run token>``, so that a run of a job that was taken over
    cannot release a later run's hold, even one by the same worker."""
    return f"{worker} {secrets.token_hex(4)}"


async def hold(redis: Redis, queue: str, job_id: str, hold: str) -> None:
    """Record that the run ``hold`` runs ``job_id`` (its worker's heartbeat must exist)."""
    await redis.hset(held_key(queue), job_id, hold)  # type: ignore[misc]


async def release(redis: Redis, queue: str, job_id: str, hold: str) -> bool:
    """End the run ``hold``'s hold on ``job_id``; False if it no longer held it (taken over)."""
    done = await cast(Any, redis).eval(_RELEASE, 1, held_key(queue), job_id, hold)
    return bool(done)


async def held(redis: Redis, queue: str) -> dict[str, str]:
    """Every held job of ``queue``: job id -> hold."""
    raw = await redis.hgetall(held_key(queue))  # type: ignore[misc]
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


async def orphans(
    redis: Redis, queue: str, worker: str | None = None, running: Collection[str] = ()
) -> dict[str, str]:
    """The held jobs whose worker's heartbeat is gone, and those of ``worker``'s dead
    predecessor (holds naming ``worker`` that are none of its ``running`` holds): job id ->
    hold."""
    jobs = await held(redis, queue)
    mine = {job: h for job, h in jobs.items() if hold_owner(h) == worker and h not in running}
    others = {job: h for job, h in jobs.items() if hold_owner(h) != worker}
    owners = sorted({hold_owner(h) for h in others.values()})
    if not owners:
        return mine
    async with redis.pipeline(transaction=False) as pipe:
        for owner in owners:
            pipe.exists(beat_key(queue, owner))
        alive = dict(zip(owners, await pipe.execute(), strict=True))
    return mine | {job: h for job, h in others.items() if not alive[hold_owner(h)]}


async def take_over(
    redis: Redis, queue: str, job_id: str, hold: str, *, predecessor: bool = False
) -> bool:
    """Free ``job_id`` from the run ``hold`` of a dead worker, for any worker to run at once;
    False if that run no longer holds it or its worker is alive after all. ``predecessor``: the
    hold names the caller's own id but none of its runs (see `orphans`), so the heartbeat, the
    caller's own, says nothing and is not consulted."""
    keys = (
        held_key(queue),
        beat_key(queue, hold_owner(hold)),
        in_progress_key_prefix + job_id,
        queue,
        job_key_prefix + job_id,
    )
    flag = "1" if predecessor else "0"
    done = await cast(Any, redis).eval(
        _TAKE_OVER, len(keys), *keys, job_id, hold, timestamp_ms(), flag
    )
    return bool(done)


def takeover_from(previous_beat: float | None, beat: float, interval: float, since: float) -> float:
    """When a worker that beat at ``beat`` (and before at ``previous_beat``; monotonic seconds)
    may take jobs over again, given that it may from ``since``: one heartbeat life on when the
    two beats are so far apart that the other workers' heartbeats may have expired in the same
    Redis outage, whose workers have had no chance to beat again yet."""
    if previous_beat is not None and beat - previous_beat > CUT_OFF_INTERVALS * interval:
        return max(since, beat + beat_ttl(interval))
    return since
