"""Fault-suite fixtures: a Postgres and a Valkey of each test's own, to stop and restart, and
workers run as the Procfile runs them (``harvester worker`` in a subprocess)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import worker_env
from worker.devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.engine.migrate import migrate

FAULT_QUEUE = "harvester:faults"


@dataclass
class Stack:
    """A private Postgres and Valkey; both keep their port across restarts."""

    pg: EmbeddedPostgres
    redis: EmbeddedRedis

    @property
    def database_url(self) -> str:
        return self.pg.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    async def restart_postgres(self, mode: str, down_for: float = 0.0) -> None:
        await asyncio.to_thread(self.pg.stop, mode)
        if down_for:
            await asyncio.sleep(down_for)  # the length of the injected outage
        await asyncio.to_thread(self.pg.start)

    async def restart_redis(self, down_for: float) -> None:
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(down_for)  # the length of the injected outage
        await asyncio.to_thread(self.redis.start)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    # Durable: an immediate shutdown must not lose commits the worker was told about (with
    # synchronous_commit=off it would, and the suite caught exactly that).
    pg = EmbeddedPostgres(tmp_path / "postgres", durable=True)
    rd = EmbeddedRedis(tmp_path / "valkey", durable=True)
    await asyncio.to_thread(pg.start)
    try:
        await asyncio.to_thread(rd.start)
        try:
            await migrate(pg.url)
            yield Stack(pg, rd)
        finally:
            await asyncio.to_thread(rd.kill)
    finally:
        await asyncio.to_thread(pg.stop, "immediate")


class WorkerProcess:
    """``python -m worker worker``, as the Procfile's ``worker:`` line runs it."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "worker", env=self.env, stdout=log, stderr=log
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        if self.running:
            self.signal(signal.SIGKILL)
            await self.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
async def spawn_worker(stack: Stack, tmp_path: Path) -> AsyncIterator[Callable[..., WorkerProcess]]:
    """Workers against the test's own stack; killed at teardown if still running."""
    made: list[WorkerProcess] = []

    def factory(**settings: object) -> WorkerProcess:
        env = worker_env(stack.database_url, stack.redis_url, FAULT_QUEUE, **settings)
        w = WorkerProcess(env, tmp_path / "worker.log")
        made.append(w)
        return w

    yield factory
    for w in made:
        await w.stop()


async def outcome_counts(database_url: str) -> tuple[int, int, int]:
    """(distinct (job, url) outcomes, documents, duplicated (job, url) pairs) across both tables."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
            WITH o AS (SELECT job_id, url FROM documents UNION ALL SELECT job_id, url FROM fetch_failures)
            SELECT (SELECT count(*) FROM (SELECT DISTINCT job_id, url FROM o) d) AS outcomes,
                   (SELECT count(*) FROM documents) AS documents,
                   (SELECT count(*) FROM (SELECT 1 FROM o GROUP BY job_id, url HAVING count(*) > 1) x) AS dups
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return row["outcomes"], row["documents"], row["dups"]


async def reach(stack: Stack, n: int, timeout: float) -> None:
    """Wait until at least ``n`` (job, url) outcomes have landed (Postgres may be down meanwhile)."""
    from tests.helpers import wait_until

    async def reached() -> bool:
        counts = await try_outcome_counts(stack.database_url)
        return counts is not None and counts[0] >= n

    await wait_until(reached, timeout=timeout)


async def try_outcome_counts(database_url: str) -> tuple[int, int, int] | None:
    """`outcome_counts`, or None while Postgres is down."""
    try:
        return await outcome_counts(database_url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
