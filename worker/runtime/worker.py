"""`HarvesterWorker`: arq's Worker made to ride out Redis outages and poison jobs, with a heartbeat
of its own, a hold on each job it runs, and the takeover of dead workers' jobs."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from contextvars import ContextVar
from typing import Any

from arq.jobs import serialize_result
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.cron import CRON_PREFIX
from worker.errors import ConfigError, RedisUnavailableError
from worker.logs import redact
from worker.queue import heartbeat, holds, rejections
from worker.queue.connection import probe, redis_error
from worker.settings import Settings

log = logging.getLogger("harvester.worker")

_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, WatchError, OSError)

# The hold (`worker.queue.holds`) of the job the current task runs: set by run_job, read by the
# finish_job arq calls from inside it.
_HOLD: ContextVar[str | None] = ContextVar("harvester_hold", default=None)

# Numbers the workers of one process (tests run several), so each has a heartbeat of its own.
_instances = itertools.count(1)


class HarvesterWorker(Worker):
    """arq's Worker, made to ride out Redis restarts.

    Every Redis command already retries through an outage (see
    `worker.queue.connection.redis_retry`). What can still fail is guarded here: a poll that fails
    is retried on the next tick, and a job whose bookkeeping with Redis fails is left for arq to
    run again. Only an outage longer than the retry budget ends the worker, with
    `RedisUnavailableError` and a non-zero exit, so the process manager restarts it. A Redis that
    cannot be reached at start-up is said at once (`redis.unavailable`), before the same budget
    is spent waiting for it.

    Each worker also has a heartbeat and a registry entry of its own (`worker.queue.heartbeat`),
    so that ``harvester status`` and ``harvester health`` see every process, and a dead one. It
    records the jobs it runs (`worker.queue.holds`), and with each beat takes over the jobs of
    workers whose heartbeat is gone, so that they run again within seconds of a crash rather
    than when arq's lock expires. A run whose job was taken over (this worker was stalled) ends
    without touching the job's keys, which belong to the run that holds it now.
    """

    def __init__(self, *args: Any, redis_retry_time: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redis_retry_time = redis_retry_time
        self._redis_down_since: float | None = None
        self.worker_id = heartbeat.worker_id(next(_instances))
        self.health_check_key = heartbeat.beat_key(self.queue_name, self.worker_id)
        self._started_at = time.time()
        self._registered = False
        self._leaving = False
        self._beating = asyncio.Lock()
        self._holds: set[str] = set()  # this worker's runs' holds, so never a predecessor's
        self._predecessor_checked = False  # a dead predecessor's jobs (same id) taken over
        self._last_beat: float | None = None  # monotonic: when the last beat was written
        self._takeover_from = 0.0  # monotonic: no takeover before (see holds.takeover_from)
        self.ctx["worker_id"] = self.worker_id

    async def record_health(self, *, first: bool = False) -> None:
        """arq's heartbeat, then (always after it) this worker's registry entry, then the
        takeover of dead workers' jobs. ``first``: beat now unless this worker has registered
        (a job is held only once the heartbeat that vouches for it exists)."""
        async with self._beating:
            if first:
                if self._registered:
                    return
                self._last_health_check = 0
            last = self._last_health_check
            await super().record_health()
            if self._last_health_check == last or self._leaving:
                return  # no beat was due
            if not self._registered:
                forgotten = await heartbeat.prune(self.pool, self.queue_name, socket.gethostname())
                if forgotten:
                    log.info("workers.forgotten", extra={"workers": ", ".join(forgotten)})
            registration = self._registration()
            # Set before the write, not after: a close that cancels this beat while it waits for
            # the reply must still take out the entry the write may have made.
            self._registered = True
            await heartbeat.register(self.pool, self.queue_name, self.worker_id, registration)
            await self._after_beat(time.monotonic())

    async def _after_beat(self, now: float) -> None:
        """Take over dead workers' jobs, unless this worker was cut off from Redis so long that
        live workers may look dead too (they get one heartbeat life to beat again)."""
        interval = self.health_check_interval
        since = holds.takeover_from(self._last_beat, now, interval, self._takeover_from)
        self._last_beat = now
        if since > self._takeover_from:
            log.warning("takeover.paused", extra={"for_s": round(since - now, 1)})
        self._takeover_from = since
        if now >= since:
            await self._take_over()

    async def _take_over(self) -> None:
        """Free the jobs held by workers whose heartbeat is gone, and, as this worker starts, by
        a dead predecessor with its id (a restarted container's PID 1), for any worker to run
        now. Only at the start: should two live processes share an id (containers with the
        host's hostname), they must not take each other's jobs at every beat."""
        me = None if self._predecessor_checked else self.worker_id
        orphans = await holds.orphans(self.pool, self.queue_name, me, self._holds)
        for job_id, hold in orphans.items():
            owner = heartbeat.hold_owner(hold)
            mine = owner == me
            if await holds.take_over(self.pool, self.queue_name, job_id, hold, predecessor=mine):
                log.warning("job.taken_over", extra={"job_id": job_id, "owner": owner})
        self._predecessor_checked = True

    def _registration(self) -> heartbeat.Registration:
        return heartbeat.Registration(
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=self._started_at,
            interval=self.health_check_interval,
            last_beat=time.time(),
            jobs={
                "complete": self.jobs_complete,
                "failed": self.jobs_failed,
                "retried": self.jobs_retried,
                "ongoing": sum(not t.done() for t in self.tasks.values()),
            },
        )

    async def _unregister(self) -> None:
        """Leave the registry before arq deletes the heartbeat: a clean exit is not a death."""
        self._leaving = True
        if not self._registered or self._redis_down_since is not None:
            return
        try:
            await heartbeat.unregister(self.pool, self.queue_name, self.worker_id)
        except _REDIS_ERRORS as exc:
            log.warning("worker.close_without_redis", extra={"error": repr(exc)})

    async def main(self) -> None:
        # Closed before its run began: a close that came before the run's task first ran found
        # no main task to cancel, and closed the Redis pool (arq's main would open a new one on
        # arq's default settings and poll for ever). Start nothing, so the run ends at once.
        if self._leaving:
            return
        await self._wait_for_redis()
        if self._leaving:  # closed while it waited for Redis, by a close that cancels nothing
            return
        await super().main()

    async def _wait_for_redis(self) -> None:
        """Ping Redis (one attempt at a time) until it answers, saying at the first failure
        that it is unavailable and for how long we keep trying. arq's start-up would otherwise
        ride out the outage in silence, every command retrying on its own."""
        settings: Settings = self.ctx["settings"]
        while True:
            try:
                await probe(settings)
            except (*_REDIS_ERRORS, ResponseError) as exc:
                problem = redis_error(settings, exc)
                if isinstance(problem, ConfigError):  # no such database, wrong password
                    self._redis_down_since = time.monotonic()  # close() skips Redis then
                    raise problem from exc
                await self._on_redis_error(exc)
            else:
                self._redis_recovered()
                return

    def _redis_recovered(self) -> None:
        if self._redis_down_since is not None:
            outage = time.monotonic() - self._redis_down_since
            log.info("redis.recovered", extra={"outage_s": round(outage, 1)})
            self._redis_down_since = None

    async def _poll_iteration(self) -> None:
        try:
            await super()._poll_iteration()
        except _REDIS_ERRORS as exc:
            await self._on_redis_error(exc)
        else:
            self._redis_recovered()

    async def run_job(self, job_id: str, score: int) -> None:
        try:
            await self._run_held(job_id, score)
        finally:
            if (hold := _HOLD.get()) is not None:
                self._holds.discard(hold)

    async def _run_held(self, job_id: str, score: int) -> None:
        """arq's run of the job, held by this worker (`worker.queue.holds`) while it runs."""
        try:
            await self.record_health(first=True)
            hold = holds.hold_value(self.worker_id)
            _HOLD.set(hold)  # this task's: finish_job, called inside run_job, reads it
            self._holds.add(hold)  # before Redis has it: never mistaken for a predecessor's
            await holds.hold(self.pool, self.queue_name, job_id, hold)
            await super().run_job(job_id, score)
        except _REDIS_ERRORS as exc:
            # The rows are in Postgres or the job never started; either way arq runs it again
            # once its in-progress key expires, and a re-run skips what already landed.
            log.warning("job.redis_lost", extra={"job_id": job_id, "error": repr(exc)})
        except Exception as exc:
            # arq re-raises a job task's error in its poll loop, which would end the process and
            # leave the job queued for the next worker to die on. Whatever got past every other
            # check costs this one job: it fails, with the error as its result.
            log.exception("job.crashed", extra={"job_id": job_id, "error": repr(exc)})
            await self._fail_crashed(job_id, exc)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        if await self._release(job_id):
            await super().finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's end of a job that failed without its function returning: not a valid job, an
        unknown function, expired, out of tries, or crashed (`_fail_crashed`). Such a job lands
        no row, or not all of them, so it is listed with the refused ones, where ``harvester
        status`` finds it; a cron tick is not (one cut short fails its second start as out of
        tries, and the next tick does the work)."""
        if await self._release(job_id):
            await super().finish_failed_job(job_id, result_data)
            if not job_id.startswith(CRON_PREFIX):
                await rejections.record(self.pool, self.queue_name, job_id)

    async def _release(self, job_id: str) -> bool:
        """End this run's hold on ``job_id``; False (and arq's bookkeeping is skipped) when the
        job was taken over meanwhile: its keys belong to the run that holds it now."""
        hold = _HOLD.get()
        if hold is None or await holds.release(self.pool, self.queue_name, job_id, hold):
            return True
        log.warning("job.left", extra={"job_id": job_id, "reason": "taken over by another worker"})
        return False

    async def _fail_crashed(self, job_id: str, exc: Exception) -> None:
        self.jobs_failed += 1
        now = timestamp_ms()
        result = serialize_result(
            "?",
            (),
            {},
            0,
            0,
            False,
            exc,
            now,
            now,
            job_id,
            self.queue_name,
            job_id,
            serializer=self.job_serializer,
        )
        try:
            await asyncio.shield(self.finish_failed_job(job_id, result))
        except _REDIS_ERRORS as redis_exc:
            log.warning("job.redis_lost", extra={"job_id": job_id, "error": repr(redis_exc)})

    async def _on_redis_error(self, exc: BaseException) -> None:
        now = time.monotonic()
        settings: Settings = self.ctx["settings"]
        if self._redis_down_since is None:
            self._redis_down_since = now
            log.warning(
                "redis.unavailable",
                extra={
                    "url": redact(settings.redis_url),
                    "retry_s": self._redis_retry_time,  # HARVESTER_REDIS_RETRY_TIME
                    "error": repr(exc),
                },
            )
        if now - self._redis_down_since > self._redis_retry_time:
            raise RedisUnavailableError(
                f"{redis_error(settings, exc)} (gave up after {self._redis_retry_time:g} s: "
                "HARVESTER_REDIS_RETRY_TIME)"
            ) from exc
        # A failed poll may have taken a job slot without starting a job. Give leaked slots back,
        # but only when no job is running: then, once done-callbacks have run (sleep(0)), every
        # slot still counted is a leaked one, with no race against a job finishing meanwhile.
        if all(t.done() for t in self.tasks.values()):
            await asyncio.sleep(0)
            while self.job_counter > 0:
                self.job_counter -= 1
                self.sem.release()
        await asyncio.sleep(min(1.0, self.poll_delay_s * 10))

    async def close(self) -> None:
        await self._unregister()
        if self._redis_down_since is None:
            # What arq's close does first (cancel the running jobs of a worker that handles no
            # signals, then wait for every job task), done here so that a cancelled job's
            # CancelledError, which arq's gather would raise, cannot skip the rest of its close.
            await self._end_jobs(cancel=not self._handle_signals)
            try:
                await super().close()
            except _REDIS_ERRORS as exc:
                log.warning("worker.close_without_redis", extra={"error": repr(exc)})
            else:
                return
        # Redis is gone: skip arq's bookkeeping. Stop running jobs first (they re-run later and
        # skip what landed), so that closing the session cannot turn fetches into failures.
        await self._end_jobs(cancel=True)
        if self.on_shutdown is not None:
            await self.on_shutdown(self.ctx)

    async def _end_jobs(self, *, cancel: bool) -> None:
        """Wait for every job task to end (after cancelling them with ``cancel``), and forget
        them."""
        if cancel:
            for task in self.tasks.values():
                task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        self.tasks.clear()
