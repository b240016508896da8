"""Fixtures for every test, and the test session's services: a real Postgres and a real Redis,
started once per session, and only when a test asks for them (tests/unit never does).

Tests are marked by their folder: unit (no services), integration (the session's Postgres,
Valkey and local HTTP servers), faults (servers of their own, killed and restarted, and
processes run as a process manager runs them).

By default both are embedded (pip-shipped PostgreSQL and Valkey under a temporary folder). Set
``HARVESTER_TEST_DATABASE_URL`` / ``HARVESTER_TEST_REDIS_URL`` to use servers of your own: the
session creates (and drops) a database of its own on that Postgres, and flushes the given Redis
database before each test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import TEST_QUEUE, Services, settings_factory, with_database
from tests.helpers.cli import InProcess
from tests.helpers.locks import SECRET_ENV, lock_all, profiles_toml
from tests.helpers.pgbouncer import Pgbouncer, pgbouncer
from tests.helpers.upstream import Upstream
from worker.devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.engine import store
from worker.engine.fetch import Fetcher
from worker.engine.migrate import migrate
from worker.engine.session import create_session
from worker.queue.connection import connect
from worker.runtime.app import create_worker
from worker.settings import Settings


@pytest.fixture(scope="session")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    db_url = os.environ.get("HARVESTER_TEST_DATABASE_URL")
    redis_url = os.environ.get("HARVESTER_TEST_REDIS_URL")
    root = tmp_path_factory.mktemp("servers")
    pg = None if db_url else EmbeddedPostgres(root / "postgres")
    rd = None if redis_url else EmbeddedRedis(root / "valkey")
    try:
        if pg is not None:
            db_url = pg.start()
        if rd is not None:
            redis_url = rd.start()
        assert db_url
        assert redis_url
        yield db_url, redis_url
    finally:
        if rd is not None:
            rd.stop()
        if pg is not None:
            pg.stop(mode="immediate")


@pytest.fixture(scope="session")
async def services(_servers: tuple[str, str]) -> AsyncIterator[Services]:
    """A database of this session's own, migrated, and a Redis URL."""
    admin_url, redis_url = _servers
    name = f"harvester_test_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    db_url = with_database(admin_url, name)
    await migrate(db_url)
    try:
        yield Services(db_url, redis_url)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def make_settings(services: Services) -> Callable[..., Settings]:
    """Settings pointing at the session's services, with backoff waits off and loopback allowed."""
    return settings_factory(
        database_url=services.database_url,
        redis_url=services.redis_url,
        queue=TEST_QUEUE,
        allowed_networks="127.0.0.0/8",
        retry_base_delay=0.0,
        max_attempts=3,
        concurrency=16,
        per_host=16,
        request_timeout=10.0,
    )


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def pool(services: Services, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """The store's pool on an empty documents / fetch_failures pair."""
    p = await store.create_pool(settings)
    await p.execute(
        "TRUNCATE documents, fetch_failures, sources, replays, job_leases, records, record_seen, "
        "record_failures, latest_document_refs, webhook_outbox RESTART IDENTITY"
    )
    try:
        yield p
    finally:
        await store.close_pool(p)


@pytest.fixture
def bouncer(_servers: tuple[str, str], tmp_path: Path) -> Iterator[Pgbouncer]:
    """A pgbouncer in transaction mode in front of the session's Postgres (its ``url`` maps a
    DSN there to one through pgbouncer); stopped after the test."""
    with pgbouncer(tmp_path / "pgbouncer", _servers[0]) as b:
        yield b


@pytest.fixture
async def redis(services: Services) -> AsyncIterator[aioredis.Redis]:
    """A plain Redis client on a flushed database."""
    client = aioredis.Redis.from_url(services.redis_url)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def arq_queue(redis: aioredis.Redis, settings: Settings) -> AsyncIterator[ArqRedis]:
    """harvester's JSON arq client on the flushed test queue, for enqueueing in tests."""
    client = await connect(settings)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """A scripted local HTTP upstream (aiohttp.web) on a loopback port."""
    async with Upstream().serving() as up:
        yield up


@pytest.fixture
def credentials_file(tmp_path: Path, upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A credentials file with a profile of each type (and a wrong twin of each) for the
    upstream, whose /api/<type>/ paths demand them; the secrets are in the environment."""
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    lock_all(upstream.locks, upstream.tokens)
    path = tmp_path / "credentials.toml"
    host = upstream.base.removeprefix("http://")
    path.write_text(profiles_toml([host], upstream.url("/oauth/token")))
    return path


@pytest.fixture
async def make_fetcher() -> AsyncIterator[Callable[[Settings], Fetcher]]:
    """Fetchers over real sessions, closed after the test."""
    sessions = []

    def factory(s: Settings) -> Fetcher:
        session = create_session(s)
        sessions.append(session)
        return Fetcher(session, s)

    yield factory
    for session in sessions:
        await session.close()


@pytest.fixture
async def make_worker(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, redis: aioredis.Redis
) -> AsyncIterator[Callable[..., Worker]]:
    """arq workers in burst mode with harvester's real start-up and shutdown. Cron tasks are
    off, so a run that spans a tick does only the jobs a test enqueued."""
    workers: list[Worker] = []

    def factory(**overrides: Any) -> Worker:
        w = create_worker(
            make_settings(**overrides),
            burst=True,
            poll_delay=0,
            handle_signals=False,
            cron_jobs=[],
        )
        workers.append(w)
        return w

    yield factory
    for w in workers:
        await w.close()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> InProcess:
    """``await cli("sources", "list", env=...)``: the harvester command, run in-process."""
    return InProcess(capsys)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


_FOLDER_MARKS = {"unit": pytest.mark.unit, "integration": pytest.mark.integration}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by its folder, so ``-m unit`` and the folders always agree."""
    for item in items:
        folder = item.path.parent.name
        if folder == "faults":
            item.add_marker(pytest.mark.faults)
        elif folder in _FOLDER_MARKS:
            item.add_marker(_FOLDER_MARKS[folder])
