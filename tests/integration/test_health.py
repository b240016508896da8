"""`harvester health` and the worker registry: one heartbeat per worker process, a dead one
named, a clean exit forgotten; checked with real workers (killed ones in subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.helpers import TEST_QUEUE, Services, wait_until
from tests.helpers.cli import InProcess, cli_env
from tests.helpers.processes import stop_tree
from tests.helpers.workers import long_running, running
from worker.queue.heartbeat import (
    Registration,
    WorkerState,
    beat_key,
    read_workers,
    register,
)
from worker.settings import Settings


async def _workers(redis: aioredis.Redis) -> list[WorkerState]:
    return await read_workers(redis, TEST_QUEUE)


def _dead_registration(host: str, pid: int, seconds_ago: float) -> Registration:
    """What a worker of ``host`` leaves in the registry when killed ``seconds_ago``."""
    last = time.time() - seconds_ago
    return Registration(host=host, pid=pid, started_at=last - 60, interval=1, last_beat=last)


async def test_a_killed_worker_is_dead_for_health_and_status(
    cli: InProcess, services: Services, redis: aioredis.Redis, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """Of two workers on this host, one killed with SIGKILL: once its heartbeat expires,
    `health` exits 1 naming it and `status` marks it dead while the other stays alive; the
    other's clean exit removes it from the registry, the dead one stays listed."""
    env = cli_env(services, HARVESTER_HEALTH_CHECK_INTERVAL="1")
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    procs = []
    try:
        for log in logs:
            with log.open("wb") as out:
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "worker", "worker", env=env, stdout=out, stderr=out
                    )
                )
        pids = {p.pid for p in procs}

        async def alive() -> set[int | None]:
            # Registered too (started_at): one killed before it registered would vanish once
            # its heartbeat expired, not show as dead.
            return {w.pid for w in await _workers(redis) if w.alive and w.started_at is not None}

        async def both_alive() -> bool:
            return await alive() == pids

        try:
            await wait_until(both_alive, timeout=60)
        except AssertionError:
            raise AssertionError([log.read_text() for log in logs]) from None
        healthy = await cli("health", "--min", "2", env=env)
        assert healthy.returncode == 0, healthy.stdout

        victim, survivor = procs
        victim.kill()
        await victim.wait()

        async def victim_dead() -> bool:
            return {w.pid for w in await _workers(redis) if not w.alive} == {victim.pid}

        await wait_until(victim_dead, timeout=30)
        health = await cli("health", env=env)
        assert health.returncode == 1, health.stdout
        assert "1 of 2 worker processes" in health.stdout, health.stdout
        assert f"{socket.gethostname()}:{victim.pid}" in health.stdout
        assert f"{socket.gethostname()}:{survivor.pid}" not in health.stdout
        status = await cli("status", "--json", env=env)
        rows = {w["pid"]: w["alive"] for w in json.loads(status.stdout)["workers"]}
        assert rows == {victim.pid: False, survivor.pid: True}
        screen = await cli("status", env={**env, "COLUMNS": "80"})
        assert "workers: 1 alive, 1 dead" in screen.stdout, screen.stdout

        survivor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(survivor.wait(), 30) == 0
        assert [(w.pid, w.alive) for w in await _workers(redis)] == [(victim.pid, False)]
        after = await cli("health", env=env)
        assert after.returncode == 1, after.stdout
        assert f"{socket.gethostname()}:{victim.pid}" in after.stdout
    finally:
        for proc in procs:
            await stop_tree(proc)


async def test_health_all_and_min_count_the_workers_they_say(
    cli: InProcess,
    services: Services,
    redis: aioredis.Redis,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
) -> None:
    """Two live workers here: `health` and `--min 2` exit 0, `--min 3` exits 1; a dead worker
    of another host fails only `--all`, which names it."""
    env = cli_env(services)
    first, second = (long_running(make_settings()) for _ in range(2))
    async with running(first, second):

        async def two_alive() -> bool:
            return sum(w.alive for w in await _workers(redis)) == 2

        await wait_until(two_alive, timeout=30)
        assert (await cli("health", env=env)).returncode == 0
        assert (await cli("health", "--min", "2", env=env)).returncode == 0
        too_few = await cli("health", "--min", "3", env=env)
        assert too_few.returncode == 1
        assert "2 worker process(es) alive" in too_few.stdout, too_few.stdout

        await register(redis, TEST_QUEUE, "elsewhere:41", _dead_registration("elsewhere", 41, 5))
        here = await cli("health", env=env)
        assert here.returncode == 0, here.stdout
        everywhere = await cli("health", "--all", env=env)
        assert everywhere.returncode == 1, everywhere.stdout
        assert "'elsewhere:41' (pid 41) stopped reporting" in everywhere.stdout


async def test_a_new_worker_forgets_the_dead_workers_of_its_host(
    redis: aioredis.Redis, pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """A worker starting on a host replaces the dead workers registered there (a restart must
    not leave the host unhealthy); dead workers of other hosts stay listed."""
    host = socket.gethostname()
    await register(redis, TEST_QUEUE, f"{host}:999999", _dead_registration(host, 999999, 5))
    await register(redis, TEST_QUEUE, "elsewhere:41", _dead_registration("elsewhere", 41, 5))
    assert len(await _workers(redis)) == 2
    async with running(long_running(make_settings())):

        async def replaced() -> bool:
            return [(w.host, w.alive) for w in await _workers(redis)] == [
                ("elsewhere", False),
                (host, True),
            ]

        await wait_until(replaced, timeout=30)
        assert os.getpid() in {w.pid for w in await _workers(redis)}


async def test_a_worker_dead_for_over_an_hour_is_forgotten(
    cli: InProcess, services: Services, redis: aioredis.Redis, pool: asyncpg.Pool
) -> None:
    """A registry entry whose last beat is more than an hour old is not shown and does not
    make `health` name it; it says no worker reports."""
    host = socket.gethostname()
    await register(redis, TEST_QUEUE, f"{host}:4242", _dead_registration(host, 4242, 3700))
    assert await _workers(redis) == []
    health = await cli("health", env=cli_env(services))
    assert health.returncode == 1
    assert "no worker on host" in health.stdout
    assert "4242" not in health.stdout


async def test_a_queue_name_is_matched_literally(redis: aioredis.Redis) -> None:
    """The workers of queue ``jobs-2`` are not counted for a queue named ``jobs-?``."""
    await redis.set(beat_key("jobs-2", "h:1"), b"j_complete=1", px=60_000)
    await register(redis, "jobs-2", "h:1", _dead_registration("h", 1, 0))
    assert await read_workers(redis, "jobs-?") == []
    assert [w.id for w in await read_workers(redis, "jobs-2")] == ["h:1"]
