"""The held-jobs registry and the takeover script against a real Valkey: a job is freed only
from a run whose worker's heartbeat is gone (or from a dead predecessor with the worker's own
id), and a run that lost its hold cannot release it."""

from __future__ import annotations

from collections.abc import Callable

import asyncpg
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from redis.asyncio import Redis

from tests.helpers import wait_until
from tests.helpers.upstream import Upstream
from tests.helpers.workers import long_running, running
from worker.queue import holds
from worker.queue.client import enqueue_urls
from worker.queue.heartbeat import beat_key, held_key, read_workers
from worker.settings import Settings

QUEUE = "harvester:test-holds"
JOB = "job-1"


async def _running(redis: Redis, worker: str, *, alive: bool) -> str:
    """JOB as arq and harvester leave it while ``worker`` runs it: queued (arq keeps a running
    job in its set), in progress, held; and the worker's heartbeat if ``alive``."""
    await redis.zadd(QUEUE, {JOB: 1000})
    await redis.set(job_key_prefix + JOB, b"{}")
    await redis.set(in_progress_key_prefix + JOB, b"1", px=130_000)
    if alive:
        await redis.set(beat_key(QUEUE, worker), b"beat", px=10_000)
    hold = holds.hold_value(worker)
    await holds.hold(redis, QUEUE, JOB, hold)
    return hold


async def test_a_dead_workers_job_is_freed_for_any_worker(redis: Redis) -> None:
    """Its heartbeat gone, the worker's job is an orphan; the takeover drops the hold and arq's
    in-progress key and keeps the job queued (with its score), so the next poll starts it."""
    hold = await _running(redis, "host:1", alive=False)
    assert await holds.orphans(redis, QUEUE) == {JOB: hold}
    assert await holds.take_over(redis, QUEUE, JOB, hold)
    assert await redis.exists(in_progress_key_prefix + JOB) == 0
    assert await redis.zscore(QUEUE, JOB) == 1000
    assert await holds.held(redis, QUEUE) == {}
    # The stalled run, resumed, finds it no longer holds the job.
    assert not await holds.release(redis, QUEUE, JOB, hold)


async def test_a_live_workers_job_is_never_taken(redis: Redis) -> None:
    """While the heartbeat exists, the job is no orphan, and the script refuses it even if
    asked (the owner came back between the scan and the takeover)."""
    hold = await _running(redis, "host:1", alive=True)
    assert await holds.orphans(redis, QUEUE) == {}
    assert not await holds.take_over(redis, QUEUE, JOB, hold)
    assert await redis.exists(in_progress_key_prefix + JOB) == 1
    assert await holds.held(redis, QUEUE) == {JOB: hold}
    assert [w.held for w in await read_workers(redis, QUEUE)] == [(JOB,)]
    assert await holds.release(redis, QUEUE, JOB, hold)
    assert await redis.exists(held_key(QUEUE)) == 0


async def test_only_the_run_named_in_the_hold_is_taken_or_released(redis: Redis) -> None:
    """A later run's hold (a new run of the job, even by the same worker) is neither taken over
    on an older run's word nor released by the older run."""
    old = await _running(redis, "host:1", alive=False)
    new = holds.hold_value("host:1")
    await holds.hold(redis, QUEUE, JOB, new)
    assert not await holds.take_over(redis, QUEUE, JOB, old)
    assert not await holds.release(redis, QUEUE, JOB, old)
    assert await holds.held(redis, QUEUE) == {JOB: new}


async def test_a_finished_job_is_not_queued_again(redis: Redis) -> None:
    """A worker that died after arq finished the job but before it released its hold: the
    takeover drops the hold and puts nothing back in the queue."""
    hold = await _running(redis, "host:1", alive=False)
    await redis.zrem(QUEUE, JOB)
    await redis.delete(job_key_prefix + JOB)
    assert await holds.take_over(redis, QUEUE, JOB, hold)
    assert await redis.zcard(QUEUE) == 0


async def test_a_predecessors_hold_under_the_workers_own_id_is_taken_over(redis: Redis) -> None:
    """A hold naming a worker's own id but none of its runs is a dead predecessor's (a restarted
    container's PID 1 beats under the same key): an orphan although the heartbeat exists, and
    taken over unless the hold changed; the worker's own runs are never orphans."""
    hold = await _running(redis, "host:1", alive=True)
    assert await holds.orphans(redis, QUEUE) == {}
    assert await holds.orphans(redis, QUEUE, "host:1", {hold}) == {}
    assert await holds.orphans(redis, QUEUE, "host:1") == {JOB: hold}
    assert not await holds.take_over(
        redis, QUEUE, JOB, holds.hold_value("host:1"), predecessor=True
    )
    assert await holds.take_over(redis, QUEUE, JOB, hold, predecessor=True)
    assert await redis.exists(in_progress_key_prefix + JOB) == 0
    assert await redis.zscore(QUEUE, JOB) == 1000
    assert await holds.held(redis, QUEUE) == {}


async def test_a_restarted_worker_with_its_predecessors_id_reruns_its_job_at_once(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings, upstream: Upstream
) -> None:
    """A worker whose predecessor (same id: same host and pid) died holding a job, arq's lock
    still set for 130 s, takes the job over as it starts and runs it within seconds."""
    [job_id] = await enqueue_urls(arq_queue, [upstream.url("/json/p0")], job_id_prefix="pred")
    worker = long_running(settings)
    await arq_queue.set(in_progress_key_prefix + job_id, b"1", px=130_000)
    await holds.hold(arq_queue, settings.queue, job_id, holds.hold_value(worker.worker_id))
    async with running(worker):

        async def landed() -> bool:
            return await pool.fetchval("SELECT count(*) FROM documents") == 1

        await wait_until(landed, timeout=15)
    assert len(upstream.hits_for("/json/p0")) == 1


async def test_a_running_worker_takes_no_hold_under_its_id_after_its_start(
    arq_queue: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    """Past its start, a worker leaves holds naming its id alone: were they written by another
    live process sharing the id (containers with the host's hostname, all PID 1), taking them
    at every beat would move that process's jobs again and again."""
    settings = make_settings(health_check_interval=1)
    worker = long_running(settings)
    async with running(worker):

        async def started() -> bool:
            # Registered, and past the start's one look for a dead predecessor's holds: the
            # registry entry is written before that look, so a hold written as soon as the
            # entry shows would be taken as a predecessor's, which is not what this test is about.
            states = await read_workers(arq_queue, settings.queue)
            alive = any(w.id == worker.worker_id and w.alive for w in states)
            return alive and worker._predecessor_checked

        await wait_until(started, timeout=15)
        await arq_queue.set(in_progress_key_prefix + JOB, b"1", px=130_000)
        hold = holds.hold_value(worker.worker_id)
        await holds.hold(arq_queue, settings.queue, JOB, hold)
        first = worker._last_beat

        async def two_more_beats() -> bool:
            last = worker._last_beat
            return first is not None and last is not None and last >= first + 2

        await wait_until(two_more_beats, timeout=15)
        assert await holds.held(arq_queue, settings.queue) == {JOB: hold}
        assert await arq_queue.exists(in_progress_key_prefix + JOB) == 1
        await arq_queue.hdel(held_key(settings.queue), JOB)
