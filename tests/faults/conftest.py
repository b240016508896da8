"""Fault-suite fixtures: a Postgres and a Valkey of each test's own, to stop and restart, and
workers run as the Procfile runs them (see `tests.helpers.faults`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import worker_env
from tests.helpers.faults import FAULT_QUEUE, Stack, WorkerProcess
from tests.helpers.pgbouncer import Pgbouncer, pgbouncer
from tests.helpers.sentinel import SentinelGroup
from worker.devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.engine.migrate import migrate


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


@pytest.fixture
async def spawn_worker(stack: Stack, tmp_path: Path) -> AsyncIterator[Callable[..., WorkerProcess]]:
    """Workers against the test's own stack (or another ``database_url``, such as a pgbouncer in
    front of it); killed at teardown if still running."""
    made: list[WorkerProcess] = []

    def factory(*args: str, database_url: str | None = None, **settings: object) -> WorkerProcess:
        env = worker_env(
            database_url or stack.database_url, stack.redis_url, FAULT_QUEUE, **settings
        )
        w = WorkerProcess(env, tmp_path / f"worker-{len(made) + 1}.log", args)
        made.append(w)
        return w

    yield factory
    for w in made:
        await w.stop()


@pytest.fixture(params=[False], ids=["open"])
async def sentinels(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SentinelGroup]:
    """A Valkey primary, a replica and three sentinels of this test's own; all killed after it.
    Parametrized indirectly with True, the servers and the sentinels require passwords."""
    passwords = {"password": "data-pw", "sentinel_password": "sentinel-pw"} if request.param else {}
    group = SentinelGroup(tmp_path / "sentinel", **passwords)
    try:
        await asyncio.to_thread(group.start)
        yield group
    finally:
        await asyncio.to_thread(group.stop)


@pytest.fixture
def bouncer(stack: Stack, tmp_path: Path) -> Iterator[Pgbouncer]:
    """A pgbouncer in transaction mode in front of the test's own Postgres (it keeps running
    while that Postgres restarts); stopped after the test."""
    with pgbouncer(tmp_path / "pgbouncer", stack.database_url) as b:
        yield b


@pytest.fixture(params=["direct", "pgbouncer"])
def reach_postgres(
    request: pytest.FixtureRequest, stack: Stack, tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The settings by which a worker reaches the test's Postgres (`spawn_worker(**them)`):
    directly, or through a pgbouncer in transaction mode in front of it."""
    if request.param == "direct":
        yield {}
        return
    with pgbouncer(tmp_path / "pgbouncer", stack.database_url) as b:
        yield {"database_url": b.url(stack.database_url), "pgbouncer": "true"}
