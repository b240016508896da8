"""Migrations: discovered in order, applied once, recorded."""

from __future__ import annotations

import shutil
from pathlib import Path

import asyncpg

from tests.helpers import Services, migrations_up_to, scratch_database
from worker.engine.migrate import SQL_DIR, discover, migrate


async def test_migrate_applies_once_in_order(services: Services, tmp_path: Path) -> None:
    """A fresh database gets every migration; a second run applies nothing."""
    async with scratch_database(services.database_url, "harvester_mig") as url:
        first = await migrate(url)
        second = await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            recorded = [
                r["version"]
                for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
            ]
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname='public'"
                )
            }
        finally:
            await conn.close()
    assert [m.version for m in first] == recorded == [m.version for m in discover()]
    assert second == []
    assert {"documents", "fetch_failures", "schema_migrations"} <= tables


_KEYS = "harvester_request_key(url, method, body_hash) = harvester_url_key(url)"


async def test_006_keeps_rows_of_005_reachable_under_their_keys(
    services: Services, tmp_path: Path
) -> None:
    """Rows landed before 006 become GETs without a body whose key is still their URL key: a
    re-run of their job's failure conflicts with it, while a POST of the same URL is a new
    outcome (documents get their new key in 007, below)."""
    for path in SQL_DIR.glob("00[1-5]_*.sql"):
        shutil.copy(path, tmp_path / path.name)
    async with scratch_database(services.database_url, "harvester_mig") as url:
        await migrate(url, tmp_path)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO documents (job_id, url, status, body, elapsed_ms, attempts) "
                "VALUES ('old', 'http://a/x', 200, '{}', 1, 1)"
            )
            await conn.execute(
                "INSERT INTO fetch_failures (job_id, url, error, attempts) "
                "VALUES ('old', 'http://a/y', 'timeout', 3)"
            )
            applied = await migrate(url, migrations_up_to(tmp_path, 6))
            rows = await conn.fetch(
                f"SELECT url, method, body_hash, request, {_KEYS} FROM documents UNION ALL "
                f"SELECT url, method, body_hash, request, {_KEYS} FROM fetch_failures ORDER BY url"
            )
            insert = (
                "INSERT INTO fetch_failures (job_id, url, error, attempts, method) "
                "VALUES ('old', 'http://a/y', 'timeout', 3, $1) "
                "ON CONFLICT (job_id, harvester_request_key(url, method, body_hash)) DO NOTHING"
            )
            again = await conn.execute(insert, "GET")
            post = await conn.execute(insert, "POST")
        finally:
            await conn.close()
    assert applied[0].version == 6  # and any later ones
    assert [tuple(r) for r in rows] == [
        ("http://a/x", "GET", None, None, True),
        ("http://a/y", "GET", None, None, True),
    ]
    assert (again, post) == ("INSERT 0 0", "INSERT 0 1")


async def test_007_gives_each_page_a_row_and_keeps_earlier_rows_unique(
    services: Services, tmp_path: Path
) -> None:
    """After 007 a request holds a row per page and a POST of a URL is an outcome apart from its
    GET; a page, or an unpaginated row landed before 007, conflicts with itself on a re-run."""
    insert = (
        "INSERT INTO documents (job_id, url, status, body, elapsed_ms, attempts{}) "
        "VALUES ('old', 'http://a/x', 200, '{{}}', 1, 1{})"
    )
    on_conflict = (
        " ON CONFLICT (job_id, harvester_request_key(url, method, body_hash), COALESCE(page, 0))"
        " DO NOTHING"
    )
    async with scratch_database(services.database_url, "harvester_mig") as url:
        await migrate(url, migrations_up_to(tmp_path, 6))
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(insert.format("", ""))
            applied = await migrate(url, migrations_up_to(tmp_path, 7))
            page = (", page, page_url", ", {}, 'http://a/x?p={}'")
            results = [
                await conn.execute(insert.format("", "") + on_conflict),
                await conn.execute(insert.format(page[0], page[1].format(1, 1)) + on_conflict),
                await conn.execute(insert.format(page[0], page[1].format(2, 2)) + on_conflict),
                await conn.execute(insert.format(page[0], page[1].format(2, 2)) + on_conflict),
                await conn.execute(insert.format(", method", ", 'POST'") + on_conflict),
            ]
        finally:
            await conn.close()
    assert [m.version for m in applied] == [7]
    # The old row conflicts with itself, pages are rows of their own, a POST is a new outcome.
    assert results == ["INSERT 0 0", "INSERT 0 1", "INSERT 0 1", "INSERT 0 0", "INSERT 0 1"]
