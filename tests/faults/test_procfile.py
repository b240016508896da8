"""The Procfile under honcho, run as a user runs it: `honcho start`, the whole file, no release
step; and `honcho start -c worker=2` with metrics on."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.helpers import wait_until, with_database, worker_env
from tests.helpers.faults import Stack, enqueue, outcome_counts
from tests.helpers.metrics import documents_fetched, scrape
from tests.helpers.processes import alive, descendants, free_ports, stop_tree
from tests.helpers.upstream import Upstream
from worker.queue.client import enqueue_urls, open_queue
from worker.settings import load_settings

TOKEN = "procfile-test-token"
QUEUE = "harvester:procfile"


class Formation:
    """``honcho start`` in a folder of its own holding a copy of the Procfile; its output is
    collected line by line, and every process it started is stopped at the end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    async def logged(self, pattern: str, timeout: float = 30, count: int = 1) -> list[str]:
        async def seen() -> bool:
            return len(re.findall(pattern, self.text)) >= count

        await wait_until(seen, timeout=timeout)
        return re.findall(pattern, self.text)

    async def close(self) -> None:
        await stop_tree(self.proc)
        await self._reader


@pytest.fixture
async def honcho(tmp_path: Path, repo_root: Path) -> AsyncIterator[...]:  # type: ignore[misc]
    started: list[Formation] = []

    async def start(env: dict[str, str], *args: str) -> Formation:
        shutil.copy(repo_root / "Procfile", tmp_path / "Procfile")
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("honcho")),
            "--no-colour",
            "start",
            *args,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        formation = Formation(proc)
        started.append(formation)
        return formation

    yield start
    for formation in started:
        await formation.close()


def _env(stack: Stack, database_url: str, **settings: object) -> dict[str, str]:
    env = worker_env(database_url, stack.redis_url, QUEUE, concurrency=4, per_host=4, **settings)
    # `harvester` as the Procfile names it, from this interpreter's environment; and the base
    # port honcho counts from (the worker gets PORT, the api PORT + 100): free ones, not 5000.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PORT"] = str(free_ports(0, 1, 100))
    return env


async def _fresh_database(stack: Stack, name: str) -> str:
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(stack.database_url, name)


async def test_honcho_start_runs_the_whole_procfile_and_stops_cleanly(
    stack: Stack,
    upstream: Upstream,
    honcho,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """`honcho start` with no arguments on an empty database: the worker and the api migrate
    it (one of them under the lock, the other finds nothing to do) and keep running; a batch
    posted to the api is in flight when the formation gets SIGTERM; both stop within honcho's
    5 s, no process is left, and a later worker lands every URL once."""
    database_url = await _fresh_database(stack, "procfile_fresh")
    env = _env(stack, database_url, api_token=TOKEN, shutdown_grace=2)
    formation = await honcho(env)
    (port,) = await formation.logged(r"api\.started .*port=(\d+)")
    await formation.logged(r"worker\.started")
    assert int(port) == int(env["PORT"]) + 100
    urls = [upstream.url(f"/slow/{i}?delay=0.5") for i in range(60)]  # 7.5 s of work
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        batch = {"urls": urls, "job_id": "procfile-1"}
        async with session.post(
            f"http://127.0.0.1:{port}/batches", json=batch, headers=headers
        ) as r:
            assert r.status == 202, await r.text()

    async def some_landed() -> bool:
        return (await outcome_counts(database_url))[0] >= 4

    await wait_until(some_landed, timeout=30)
    children = descendants(formation.proc.pid)
    os.killpg(formation.proc.pid, signal.SIGTERM)  # the whole formation, as a platform does
    started = time.monotonic()
    await asyncio.wait_for(formation.proc.wait(), 15)
    stopped_in = time.monotonic() - started
    text = formation.text
    assert "stopped (rc=0)" not in text.split("shutdown on SIGTERM")[0], (
        text
    )  # nothing exited first
    assert stopped_in < 5, text  # before honcho's SIGKILL
    assert text.count("worker.stopped") == 1, text
    assert "Traceback" not in text, text
    assert "SIGKILL" not in text, text
    assert alive(children) == [], "a process was left"

    landed_at_stop = (await outcome_counts(database_url))[0]
    assert landed_at_stop < len(urls)  # the job really was cut short
    finish = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "worker", "--burst", env=env
    )
    assert await asyncio.wait_for(finish.wait(), 60) == 0
    assert await outcome_counts(database_url) == (len(urls), len(urls), 0)


async def test_two_workers_on_one_host_share_one_metrics_endpoint(
    stack: Stack,
    upstream: Upstream,
    honcho,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """`honcho start -c worker=2 worker` with HARVESTER_METRICS_PORT set: neither worker dies
    on the taken port, and the one serving it reports the sum of both workers' fetches."""
    metrics_port = free_ports(0)
    env = _env(
        stack, stack.database_url, metrics_port=metrics_port, metrics_dir=tmp_path / "metrics"
    )
    formation = await honcho(env, "-c", "worker=2", "worker")
    await formation.logged(r"worker\.started", count=2)
    await formation.logged(r"metrics\.serving")
    await formation.logged(r"metrics\.shared")
    urls = [upstream.url(f"/json/m{i}") for i in range(40)]
    settings = load_settings(
        redis_url=stack.redis_url, database_url=stack.database_url, queue=QUEUE
    )
    async with open_queue(settings) as redis:
        await enqueue_urls(redis, urls, batch_size=5, job_id_prefix="metrics")

    async def all_landed() -> bool:
        return (await outcome_counts(stack.database_url))[0] >= len(urls)

    await wait_until(all_landed, timeout=60)
    workers = {m for m in re.findall(r"(worker\.\d)\s+\|.*job\.done", formation.text)}
    assert len(workers) == 2, formation.text  # both took jobs

    async def summed() -> bool:
        text = await scrape(metrics_port)
        return text is not None and documents_fetched(text) == len(urls)

    await wait_until(summed, timeout=10)
    assert "Traceback" not in formation.text
    assert "address already in use" not in formation.text.lower()


async def test_when_the_serving_worker_dies_another_takes_the_metrics_port_over(
    stack: Stack,
    upstream: Upstream,
    spawn_worker,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Two workers share a metrics port; SIGKILL the one serving it, and the other serves it
    within a few seconds, the dead one's counts still in the sum."""
    metrics_port = free_ports(0)
    shared = {"metrics_port": metrics_port, "metrics_dir": tmp_path / "metrics"}
    first = spawn_worker(**shared)
    await first.start()

    async def serving() -> bool:
        return await scrape(metrics_port) is not None

    await wait_until(serving, timeout=30)
    second = spawn_worker(**shared)
    await second.start()

    async def shared_logged() -> bool:
        return "metrics.shared" in second.log()

    await wait_until(shared_logged, timeout=30)
    urls = [upstream.url(f"/json/t{i}") for i in range(10)]
    await enqueue(stack, urls, batch_size=5, prefix="takeover")

    async def counted() -> bool:
        text = await scrape(metrics_port)
        return text is not None and documents_fetched(text) == len(urls)

    await wait_until(counted, timeout=60)
    first.signal(signal.SIGKILL)
    await first.wait()
    await wait_until(counted, timeout=20)  # served again, by the second worker
    assert "metrics.serving" in second.log()
