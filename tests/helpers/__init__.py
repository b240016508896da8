"""Helpers the tests share (fixtures live in the conftest files; test modules import only from
here, never from each other)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from jobs.cron import cron_name
from worker.settings import Settings, load_settings

TEST_QUEUE = "harvester:test"


@dataclass(frozen=True)
class Services:
    """The test session's Postgres database and Redis URL."""

    database_url: str
    redis_url: str


def with_database(url: str, name: str) -> str:
    """``url`` (a Postgres DSN) naming the database ``name`` instead."""
    head, _, tail = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{tail}" if tail else "")


@contextlib.asynccontextmanager
async def scratch_database(url: str, prefix: str = "harvester_scratch") -> AsyncIterator[str]:
    """A new, empty database on the server of ``url``, as a DSN; dropped on exit."""

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield with_database(url, name)
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, noted, closed): a stopped server's."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def with_port(url: str, port: int) -> str:
    """``url`` (a Redis or Postgres URL) pointing at 127.0.0.1:``port`` instead."""
    scheme, rest = url.split("://", 1)
    netloc, sep, tail = rest.partition("/")
    userinfo = netloc.rpartition("@")[0]
    return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{port}{sep}{tail}"


def worker_env(database_url: str, redis_url: str, queue: str, **settings: object) -> dict[str, str]:
    """The environment for a harvester subprocess: this one minus any harvester settings, plus
    the given services, loopback opened, backoff off, and ``settings`` as HARVESTER_* values."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HARVESTER_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        HARVESTER_QUEUE=queue,
        HARVESTER_ALLOWED_NETWORKS="127.0.0.0/8",
        HARVESTER_RETRY_BASE_DELAY="0",
    )
    env.update({f"HARVESTER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait for an observable condition (not a fixed time); fail the test if it never holds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def cron_ctx(task: str, settings: Settings, **resources: object) -> dict[str, object]:
    """The ctx arq gives a cron task on one of its ticks, with ``resources`` (pool, redis)."""
    return {"settings": settings, "job_id": f"{cron_name(settings.queue, task)}:1", **resources}


def settings_factory(**base: Any) -> Callable[..., Settings]:
    """``factory(**overrides)`` -> `Settings` from ``base`` updated with the overrides."""

    def factory(**overrides: Any) -> Settings:
        return load_settings(**{**base, **overrides})

    return factory


def migrations_up_to(folder: Path, last: int) -> Path:
    """``folder`` holding harvester's migrations numbered up to ``last`` (to migrate a database
    to an earlier version)."""
    from worker.engine.migrate import SQL_DIR

    for path in SQL_DIR.glob("*.sql"):
        if path.name[:3].isdigit() and int(path.name[:3]) <= last:
            shutil.copy(path, folder / path.name)
    return folder
