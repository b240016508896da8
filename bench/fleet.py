"""`python -m bench.fleet`: what arq's coordination costs one Redis as the fleet grows.

Runs N arq workers in this one process (one event loop, a connection pool each) against one
Valkey (embedded, or --redis-url, flushed), with harvester's default `max_jobs` and
`poll_delay` and arq's default `queue_read_limit`, over jobs that only sleep: no fetching and no
Postgres, so what is left is what every harvester worker does to take, run and finish a job.
For each N it prints the jobs running at most at once against the fleet's job slots, the time
taken against the ideal (jobs x seconds / slots), and Redis commands per job and per second
(`INFO commandstats`, reset with `CONFIG RESETSTAT`). The workers share two cores with Valkey
here, so commands per second are a floor, not a ceiling. It prints the figures; it writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func

from worker.devtools.embedded import EmbeddedRedis
from worker.settings import Settings, load_settings

QUEUE = "harvester:fleet"
OURS = {"info", "config", "flushdb", "ping", "client", "hello", "select"}


class Gauge:
    """Jobs running now, and the most at once; events for the fleet's milestones."""

    def __init__(self, jobs: int, workers: int, target: int = 0) -> None:
        self.jobs = jobs
        self.workers = workers
        self.target = target  # `reached` is set once this many run at once
        self.connected = 0
        self.now = 0
        self.peak = 0
        self.done = 0
        self.all_connected = asyncio.Event()
        self.reached = asyncio.Event()
        self.release = asyncio.Event()  # what held jobs wait for
        self.all_done = asyncio.Event()


async def connected(ctx: dict[str, Any]) -> None:
    """A worker's on_startup: its pool is open and it is about to poll."""
    gauge: Gauge = ctx["gauge"]
    gauge.connected += 1
    if gauge.connected == gauge.workers:
        gauge.all_connected.set()


async def sleeper(ctx: dict[str, Any], seconds: float) -> None:
    """A job that sleeps ``seconds``, or (``seconds`` < 0) runs until the gauge releases it."""
    gauge: Gauge = ctx["gauge"]
    gauge.now += 1
    gauge.peak = max(gauge.peak, gauge.now)
    if gauge.target and gauge.now >= gauge.target:
        gauge.reached.set()
    try:
        if seconds < 0:
            await gauge.release.wait()
        else:
            await asyncio.sleep(seconds)
    finally:
        gauge.now -= 1
        gauge.done += 1
        if gauge.done == gauge.jobs:
            gauge.all_done.set()


async def _commands(r: aioredis.Redis) -> int:
    stats = await r.info("commandstats")
    return sum(
        int(v["calls"])
        for k, v in stats.items()
        if k.removeprefix("cmdstat_").split("|")[0] not in OURS
    )


@dataclass(frozen=True)
class Fleet:
    """What one fleet did."""

    workers: int
    read_limit: int  # arq's queue_read_limit
    slots: int  # workers x max_jobs
    jobs: int
    seconds: float  # each job's
    peak: int  # jobs running at once, at most
    took: float
    commands: int  # Redis commands, every worker's

    def line(self) -> str:
        ideal = self.jobs * self.seconds / self.slots
        return (
            f"{self.workers:>4} workers, read limit {self.read_limit}, {self.slots:>4} job "
            f"slots, {self.jobs:>5} jobs of {self.seconds:g} s: at most {self.peak:>4} running "
            f"at once; {self.took:6.1f} s (ideal {ideal:.1f} s); Redis "
            f"{self.commands / self.jobs:6.1f} commands/job, "
            f"{self.commands / self.took:8,.0f} commands/s"
        )


async def fleet(
    url: str, workers: int, per_slot: int, seconds: float, read_limit: int | None = None
) -> Fleet:
    """``workers`` workers over ``per_slot`` jobs per job slot of ``seconds`` each; arq's
    ``queue_read_limit`` is ``read_limit`` if given."""
    slots = workers * _defaults(url).max_jobs
    jobs = slots * per_slot
    gauge = Gauge(jobs, workers)
    running = await _start(url, gauge, read_limit)
    r = aioredis.Redis.from_url(url)
    try:
        await r.config_resetstat()
        started = time.perf_counter()
        await _enqueue(url, jobs, seconds)
        await gauge.all_done.wait()
        took = time.perf_counter() - started
        commands = await _commands(r)
    finally:
        await r.aclose()
        await _stop(running)
    limit = running[0][0].queue_read_limit
    return Fleet(workers, limit, slots, jobs, seconds, gauge.peak, took, commands)


async def held(url: str, workers: int, read_limit: int | None = None, watch: float = 1.0) -> int:
    """The most jobs ``workers`` workers run at once when there is a job for every slot and no
    job ends: once as many run as the slots and the read limit allow (at most 60 s), the fleet
    is watched ``watch`` seconds more, then its jobs are released."""
    slots = workers * _defaults(url).max_jobs
    gauge = Gauge(slots, workers)
    running = await _start(url, gauge, read_limit)
    try:
        gauge.target = min(slots, running[0][0].queue_read_limit)
        await _enqueue(url, slots, -1)
        await asyncio.wait_for(gauge.reached.wait(), 60)
        await asyncio.sleep(watch)  # an observation window: does any more start?
        return gauge.peak
    finally:
        gauge.release.set()
        await _stop(running)


def _defaults(url: str) -> Settings:
    return load_settings(database_url="postgresql://unused/x", redis_url=url)


async def _start(
    url: str, gauge: Gauge, read_limit: int | None
) -> list[tuple[Worker, asyncio.Task[None]]]:
    """``gauge.workers`` arq workers with harvester's settings, on an emptied Redis database,
    each connected and polling when this returns."""
    r = aioredis.Redis.from_url(url)
    try:
        await r.execute_command("FLUSHDB", "SYNC")
    finally:
        await r.aclose()
    defaults = _defaults(url)
    workers = [
        Worker(
            functions=[func(sleeper, name="sleeper")],
            redis_settings=RedisSettings.from_dsn(url),
            queue_name=QUEUE,
            max_jobs=defaults.max_jobs,
            poll_delay=defaults.poll_delay,
            ctx={"gauge": gauge},
            on_startup=connected,
            handle_signals=False,
            keep_result=defaults.keep_result,
            queue_read_limit=read_limit,
        )
        for _ in range(gauge.workers)
    ]
    running = [(w, asyncio.create_task(w.async_run())) for w in workers]
    await asyncio.wait_for(gauge.all_connected.wait(), 60)
    return running


async def _enqueue(url: str, jobs: int, seconds: float) -> None:
    pool = ArqRedis.from_url(url, decode_responses=False)
    pool.default_queue_name = QUEUE
    try:
        for i in range(jobs):
            await pool.enqueue_job("sleeper", seconds, _job_id=f"j{i}")
    finally:
        await pool.aclose()


async def _stop(running: list[tuple[Worker, asyncio.Task[None]]]) -> None:
    """Let every worker end at its next poll that finds the queue empty, and close it."""
    for w, _ in running:
        w.burst = True
    await asyncio.wait_for(asyncio.gather(*(t for _, t in running)), 60)
    for w, _ in running:
        await w.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workers", default="1,10,30", help="fleet sizes (1,10,30)")
    parser.add_argument("--per-slot", type=int, default=3, help="jobs per job slot (3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="each job's length (2)")
    parser.add_argument(
        "--read-limit", type=int, default=None, help="arq's queue_read_limit (its default)"
    )
    parser.add_argument("--redis-url", default=None, help="a Redis database to use (flushed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harvester-fleet-") as tmp:
        rd = None if args.redis_url else EmbeddedRedis(Path(tmp) / "valkey")
        try:
            url = args.redis_url or rd.start()  # type: ignore[union-attr]
            for n in (int(x) for x in args.workers.split(",")):
                run = asyncio.run(fleet(url, n, args.per_slot, args.seconds, args.read_limit))
                print(run.line(), flush=True)
        finally:
            if rd is not None:
                rd.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
