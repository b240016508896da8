"""Migrations: discovered in order, applied once, recorded."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

from tests.helpers import Services, with_database
from worker.engine.migrate import discover, migrate


async def test_migrate_applies_once_in_order(services: Services, tmp_path: Path) -> None:
    """A fresh database gets every migration; a second run applies nothing."""
    name = f"harvester_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(services.database_url, name)
    try:
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
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    assert [m.version for m in first] == recorded == [m.version for m in discover()]
    assert second == []
    assert {"documents", "fetch_failures", "schema_migrations"} <= tables
