"""Schema migrations: `sql/NNN_name.sql`, applied once each, in order, recorded in a table.

Each migration is applied in a transaction of its own under a transaction-scoped advisory lock,
so concurrent migrators apply it once, and nothing outlives a transaction: `harvester migrate`
works directly against Postgres and through pgbouncer in transaction mode alike.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from worker.engine.store import DB_ERRORS, connect_error, translated
from worker.errors import StoreError

log = logging.getLogger("harvester.migrate")

# sql/ in the source tree, installed as the package worker.sql (see pyproject.toml).
SQL_DIR = Path(str(importlib.resources.files("worker.sql")))
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x68617276  # "harv": one migrator at a time across processes

# Held until the transaction ends: one migrator at a time, and never a lock left behind.
_LOCK = "SELECT pg_advisory_xact_lock($1)"
_APPLIED = "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)"

_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = SQL_DIR) -> list[Migration]:
    """The migrations in ``directory``, in order; refuses gaps in naming and duplicate numbers."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise StoreError(f"migration file {path.name!r} is not named NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise StoreError(f"two migrations are numbered {version}")
        found[version] = Migration(version, m.group(2), path.read_text(encoding="utf-8"))
    if not found:
        raise StoreError(f"no migrations found in {directory}")
    return [found[v] for v in sorted(found)]


async def migrate(dsn: str, directory: Path = SQL_DIR) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; return those applied."""
    migrations = discover(directory)
    try:
        # No statement cache: its named statements would not survive pgbouncer's transaction
        # mode, and a handful of statements run once gain nothing from it.
        conn = await asyncpg.connect(dsn, timeout=30, statement_cache_size=0)
    except (*DB_ERRORS, ValueError) as exc:
        raise connect_error(dsn, exc) from exc
    try:
        with translated("migration failed"):
            return await _apply(conn, migrations)
    finally:
        await conn.close()


async def _apply(conn: asyncpg.Connection[Any], migrations: list[Migration]) -> list[Migration]:
    """Apply the pending ones of ``migrations`` on ``conn``, each under the migration lock."""
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute(_LOCK, _LOCK_KEY)
        await conn.execute(_TABLE)
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
    for mig in migrations:
        if mig.version in done:
            if done[mig.version] != mig.checksum:
                log.warning(
                    "migrate.changed", extra={"version": mig.version, "migration": mig.name}
                )
            continue
        if await _apply_one(conn, mig):
            log.info("migrate.applied", extra={"version": mig.version, "migration": mig.name})
            applied.append(mig)
    return applied


async def _apply_one(conn: asyncpg.Connection[Any], mig: Migration) -> bool:
    """Apply ``mig`` in one transaction unless another migrator has meanwhile; say if applied."""
    async with conn.transaction():
        await conn.execute(_LOCK, _LOCK_KEY)
        if await conn.fetchval(_APPLIED, mig.version):
            return False
        await conn.execute(mig.sql)
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            mig.version,
            mig.name,
            mig.checksum,
        )
    return True
