"""``harvester worker --processes 2``: two worker processes under one parent that forwards
SIGTERM, restarts a child that dies, serves one metrics endpoint, and refuses a bad
configuration once."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from tests.helpers import wait_until
from tests.helpers.faults import FAST, FAULT_QUEUE, Stack, WorkerProcess, enqueue, outcome_counts
from tests.helpers.metrics import documents_fetched, scrape
from tests.helpers.processes import alive, free_ports
from tests.helpers.upstream import Upstream
from worker.queue.client import open_queue
from worker.queue.heartbeat import WorkerState, read_workers
from worker.settings import load_settings

# Beats every second, so a test sees both children registered and their job counts soon.
TWO = ("--processes", "2")
SETTINGS = {**FAST, "health_check_interval": 1}


async def _workers(stack: Stack) -> list[WorkerState]:
    settings = load_settings(
        redis_url=stack.redis_url, database_url=stack.database_url, queue=FAULT_QUEUE
    )
    async with open_queue(settings) as redis:
        return await read_workers(redis, FAULT_QUEUE)


async def _two_beating(stack: Stack, worker: WorkerProcess) -> list[int]:
    """Wait until the parent runs two children and both have a live heartbeat; their pids."""

    async def beating() -> bool:
        children = worker.children()
        live = {w.pid for w in await _workers(stack) if w.alive and w.started_at is not None}
        return len(children) == 2 and live == set(children)  # beating and registered

    await wait_until(beating, timeout=30)
    return worker.children()


async def _each_took_a_job(stack: Stack, pids: list[int]) -> None:
    async def each() -> bool:
        done = {w.pid: w.jobs.get("complete", 0) for w in await _workers(stack)}
        return all(done.get(pid, 0) >= 1 for pid in pids)

    await wait_until(each, timeout=20)


async def _landed(stack: Stack, n: int, timeout: float) -> None:
    async def reached() -> bool:
        return (await outcome_counts(stack.database_url))[0] >= n

    await wait_until(reached, timeout=timeout)


async def test_two_processes_share_the_queue_and_stop_together_on_sigterm(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Two children beat (``harvester health --min 2`` passes), both take jobs and the batch
    lands once; SIGTERM to the parent stops both cleanly: exit 0, no process left, no worker
    left registered."""
    worker = spawn_worker(*TWO, **SETTINGS)
    await worker.start()
    pids = await _two_beating(stack, worker)
    assert worker.proc is not None
    assert worker.proc.pid not in pids
    health = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "health", "--min", "2", env=worker.env
    )
    assert await asyncio.wait_for(health.wait(), 30) == 0

    urls = [upstream.url(f"/slow/p{i}?delay=0.2") for i in range(40)]
    await enqueue(stack, urls, 5, "procs")
    await _landed(stack, len(urls), timeout=60)
    assert await outcome_counts(stack.database_url) == (40, 40, 0)
    await _each_took_a_job(stack, pids)

    worker.signal(signal.SIGTERM)
    assert await worker.wait(timeout=30) == 0
    assert alive(pids) == []
    assert await _workers(stack) == []
    log = worker.log()
    assert log.count("worker.stopped") == 2, log
    assert "Traceback" not in log, log


async def test_when_the_parent_is_killed_its_children_stop_cleanly(
    stack: Stack, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """SIGKILL to the parent alone: Linux gives each child a SIGTERM, and each stops as a
    worker does on SIGTERM (leaving the registry), so no worker outlives its parent."""
    worker = spawn_worker(*TWO, **SETTINGS)
    await worker.start()
    pids = await _two_beating(stack, worker)
    worker.signal(signal.SIGKILL)
    await worker.wait()

    async def gone() -> bool:
        return alive(pids) == []

    await wait_until(gone, timeout=30)
    assert await _workers(stack) == []
    log = worker.log()
    assert log.count("worker.stopped") == 2, log


async def test_a_killed_child_is_restarted_and_the_batch_completes(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """SIGKILL one child mid-batch: the parent starts a new one (a new pid) and every URL
    lands exactly once (the killed child's job after arq's lock expires)."""
    worker = spawn_worker(*TWO, **SETTINGS)
    await worker.start()
    pids = await _two_beating(stack, worker)
    urls = [upstream.url(f"/slow/k{i}?delay=0.3") for i in range(40)]
    await enqueue(stack, urls, 5, "kill")
    await _landed(stack, 5, timeout=30)

    victim = pids[0]
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        children = worker.children()
        return len(children) == 2 and victim not in children

    await wait_until(replaced, timeout=20)
    await _landed(stack, len(urls), timeout=FAST["job_timeout"] + 10 + 30)
    assert await outcome_counts(stack.database_url) == (40, 40, 0)
    assert worker.running
    assert re.search(rf"supervisor\.child_died .*pid={victim} exit_code=-9", worker.log())


async def test_one_metrics_endpoint_sums_both_children(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """With HARVESTER_METRICS_PORT, one child serves the port and the other records into the
    shared directory: the endpoint counts the fetches of both, and nothing fails on the port."""
    port = free_ports(0)
    worker = spawn_worker(*TWO, **SETTINGS, metrics_port=port, metrics_dir=tmp_path / "metrics")
    await worker.start()
    pids = await _two_beating(stack, worker)
    urls = [upstream.url(f"/slow/m{i}?delay=0.2") for i in range(40)]
    await enqueue(stack, urls, 5, "metrics")
    await _landed(stack, len(urls), timeout=60)
    await _each_took_a_job(stack, pids)

    async def summed() -> bool:
        text = await scrape(port)
        return text is not None and documents_fetched(text) == len(urls)

    await wait_until(summed, timeout=10)
    log = worker.log()
    assert (log.count("metrics.serving"), log.count("metrics.shared")) == (1, 1), log
    assert "address already in use" not in log.lower()


async def test_a_configuration_error_exits_2_once(
    stack: Stack, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A configuration the parent can judge (a credentials file that is not TOML) exits 2 with
    one line before any child starts; one only a child meets (a Redis database that does not
    exist) exits 2 after that child's one try, not in a restart loop."""
    bad = tmp_path / "credentials.toml"
    bad.write_text("this is [not toml\n")
    judged = spawn_worker(*TWO, **SETTINGS, credentials=bad)
    await judged.start()
    assert await judged.wait(timeout=30) == 2
    lines = judged.log().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("harvester: "), lines

    child_only = spawn_worker(*TWO, **SETTINGS)
    child_only.env["REDIS_URL"] = stack.redis_url.rsplit("/", 1)[0] + "/999"
    await child_only.start()
    assert await child_only.wait(timeout=60) == 2
    log = child_only.log()
    assert log.count("supervisor.child_started") <= 2, log
    assert log.count("supervisor.child_config_error") == 1, log
    assert "supervisor.gave_up" in log, log
    assert "Traceback" not in log, log
