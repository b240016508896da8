"""harvester behind a real pgbouncer in transaction mode (HARVESTER_PGBOUNCER): COPY, staging on
a re-run, the timeouts of a transaction, migrations, and a clear refusal without the setting.

The pgbouncer of these tests discards every server connection's session after each transaction
(see `tests.helpers.pgbouncer`), so any reliance on session state fails here every time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import Services, scratch_database, worker_env
from tests.helpers.cli import InProcess
from tests.helpers.pgbouncer import Pgbouncer, pgbouncer
from worker.engine import store
from worker.engine.chunks import Chunk
from worker.engine.migrate import discover, migrate
from worker.engine.outcomes import Failed, Fetched
from worker.engine.writes import write_chunk
from worker.errors import ConfigError, StoreError
from worker.settings import Settings

_TIMEOUTS = """
SELECT setting::integer FROM pg_settings
WHERE name IN ('statement_timeout', 'idle_in_transaction_session_timeout') ORDER BY name DESC
"""


def _doc(url: str, body: bytes = b'{"a": 1}') -> Fetched:
    return Fetched(url=url, status=200, body=body, elapsed_ms=5, attempts=1)


def _fail(url: str) -> Failed:
    return Failed(url=url, kind="http_status", detail="HTTP 404", status=404, attempts=1)


@pytest.fixture
async def bounced(
    bouncer: Pgbouncer, services: Services, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[asyncpg.Pool, Settings]]:
    """harvester's pool through pgbouncer (HARVESTER_PGBOUNCER=true) on emptied tables."""
    settings = make_settings(database_url=bouncer.url(services.database_url), pgbouncer=True)
    pool = await store.create_pool(settings)
    try:
        await pool.execute(
            "TRUNCATE documents, fetch_failures, sources, replays, latest_document_refs"
            " RESTART IDENTITY"
        )
        yield pool, settings
    finally:
        await store.close_pool(pool)


async def test_chunks_land_by_copy_and_a_rerun_by_staging(
    bounced: tuple[asyncpg.Pool, Settings],
) -> None:
    """A chunk lands by COPY through pgbouncer; the same chunk again with new rows goes through
    staging (temp tables of its own transaction) and adds only the new rows."""
    pool, _ = bounced
    docs, fails = [_doc("http://a"), _doc("http://b")], [_fail("http://c")]
    first = await write_chunk(pool, Chunk("j", None, docs, fails), max_url_length=8192)
    assert (first.documents, first.failures) == (2, 1)
    for _ in range(2):  # staging twice: nothing of the first staging is left to collide with
        again = await write_chunk(
            pool,
            Chunk("j", None, [*docs, _doc("http://d")], [*fails, _fail("http://e")]),
            max_url_length=8192,
        )
        assert (again.documents, again.failures) in ((1, 1), (0, 0))
    assert await pool.fetchval("SELECT count(*) FROM documents") == 3
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 2
    assert await store.existing_requests(pool, "j") == {
        (url, "GET", None) for url in ("http://a", "http://b", "http://c", "http://d", "http://e")
    }


async def test_a_refused_body_is_written_row_by_row(
    bounced: tuple[asyncpg.Pool, Settings],
) -> None:
    """The row-by-row path (a body jsonb refuses) works through pgbouncer: savepoints and staged
    failures in one transaction."""
    pool, _ = bounced
    bad = _doc("http://bad", b'{"s": "\\u0000"}')
    w = await write_chunk(
        pool, Chunk("j", None, [_doc("http://ok"), bad], [_fail("http://f")]), max_url_length=8192
    )
    assert (w.documents, [f.url for f in w.refused]) == (1, ["http://bad"])
    kinds = dict(await pool.fetch("SELECT url, error FROM fetch_failures"))
    assert kinds == {"http://bad": "invalid_json", "http://f": "http_status"}


async def test_each_transaction_carries_the_timeouts(
    bounced: tuple[asyncpg.Pool, Settings],
) -> None:
    """Behind pgbouncer the timeouts are SET LOCAL in each transaction (not startup
    parameters), so they hold inside harvester's transactions and leak nowhere else."""
    pool, settings = bounced
    ms = int(settings.db_command_timeout * 1000)
    async with pool.acquire() as conn:
        for _ in range(2):
            async with store.transaction(conn):
                assert await conn.fetch(_TIMEOUTS) == [(ms,), (2 * ms,)]
        assert await conn.fetch(_TIMEOUTS) == [(0,), (0,)]  # the server's defaults
        assert await conn.fetchval("SHOW application_name") == "harvester"


async def test_without_the_setting_the_pool_names_it(
    bouncer: Pgbouncer, services: Services, make_settings: Callable[..., Settings]
) -> None:
    """Without HARVESTER_PGBOUNCER, pgbouncer's refusal of the timeouts becomes a ConfigError
    saying what to set, not a retried 'Postgres is unavailable'."""
    settings = make_settings(database_url=bouncer.url(services.database_url))
    with pytest.raises(ConfigError, match=r"is a pgbouncer .*: set HARVESTER_PGBOUNCER=true$"):
        await store.create_pool(settings)


async def test_a_pgbouncer_ignoring_the_timeouts_still_names_the_setting(
    services: Services, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A pgbouncer told to ignore the timeouts lets the pool connect, but asyncpg's named
    statements do not survive it: that error names HARVESTER_PGBOUNCER too (and is not
    retried)."""
    ignored = ("statement_timeout", "idle_in_transaction_session_timeout")
    with pgbouncer(tmp_path, services.database_url, ignore_startup_parameters=ignored) as b:
        pool = await store.create_pool(make_settings(database_url=b.url(services.database_url)))
        try:
            await store.existing_requests(pool, "j")  # prepares a named statement
            with pytest.raises(StoreError) as caught:  # which pgbouncer has not kept
                await store.existing_requests(pool, "j")
        finally:
            await store.close_pool(pool)
    assert str(caught.value).endswith("Then set HARVESTER_PGBOUNCER=true")
    assert not caught.value.transient


async def test_without_the_setting_a_command_fails_in_one_line(
    bouncer: Pgbouncer, services: Services, cli: InProcess
) -> None:
    """A command reading Postgres through pgbouncer without the setting exits 2 with the
    message, no traceback."""
    env = worker_env(bouncer.url(services.database_url), services.redis_url, "q")
    result = await cli("failures", "list", env=env)
    assert result.returncode == 2, result
    assert "set HARVESTER_PGBOUNCER=true" in result.stderr
    assert "Traceback" not in result.stderr


async def test_migrate_runs_through_pgbouncer_and_leaves_no_lock(
    bouncer: Pgbouncer, services: Services
) -> None:
    """`harvester migrate` works through pgbouncer: each migration under a transaction's
    advisory lock, so none is left held on a server connection; a second run applies none."""
    async with scratch_database(services.database_url) as direct:
        applied = await migrate(bouncer.url(direct))
        assert [m.version for m in applied] == [m.version for m in discover()]
        assert await migrate(bouncer.url(direct)) == []
        conn = await asyncpg.connect(direct)
        try:
            locks = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            versions = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        finally:
            await conn.close()
    assert (locks, versions) == (0, len(applied))
