"""`python -m bench.pgcosts`: what each index and column of `documents` costs Postgres per row.

Issue 17's question: of the CPU Postgres spends landing a document, how much goes to each
index, to TOAST compression, to parsing the body into jsonb, and to keeping `latest_documents`
current? Each *variant* below is the shipped table with one thing taken away (or changed); the
difference from the shipped table is what that thing costs.

For each variant a schema of its own gets `documents` and `latest_document_refs` made
``LIKE public.<table> INCLUDING ALL`` (the migrated tables: every index, the expression index on
``harvester_request_key``, lz4 compression), then altered. A pool whose ``search_path`` puts that
schema first lands the rows exactly as a worker does: `Chunk.doc_records` through the pool's
jsonb codec by ``COPY``, then `latest.keep_current`, one transaction per chunk (1 MB of bodies,
the HARVESTER_COPY_CHUNK_BYTES default). The server's CPU is read from ``/proc/<pid>/stat`` of
the one backend that does the work (user + system; the WAL writer and checkpointer are other
processes and are not counted), with the WAL bytes the variant wrote and the table's size.

Variants run interleaved, ``--repeat`` times (medians shown), on an embedded PostgreSQL (fsync
on), or on BENCH_DATABASE_URL / ``--database-url``'s server, in a database of its own there as
`python -m bench` does (`bench.database`). The server must run on this machine (its backend's
CPU is read from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from bench import database, procs
from bench.upstream import make_body
from worker.engine import latest, store
from worker.engine.chunks import Chunk
from worker.engine.migrate import migrate
from worker.engine.outcomes import Fetched
from worker.settings import load_settings

CHUNK_BYTES: Final = 1024 * 1024
TICKS: Final = os.sysconf("SC_CLK_TCK")

# name -> the statements that make the variant from the shipped tables (in its schema).
# "latest off" is the shipped table without the latest_documents upkeep, which needs the unique
# request key to find its rows: variants without that index run without the upkeep too, and are
# compared with "latest off" (NO_UPKEEP).
VARIANTS: Final[dict[str, tuple[str, ...]]] = {
    "as shipped": (),
    "latest off": (),
    "- url hash index": ("DROP INDEX {s}.documents_url_idx",),
    "- source,fetched_at index": ("DROP INDEX {s}.documents_source_fetched_at_idx",),
    "- fetched_at index": ("DROP INDEX {s}.documents_fetched_at_idx",),
    "- request key (unique)": ("DROP INDEX {s}.documents_job_request_page_key",),
    "no secondary index": (
        "DROP INDEX {s}.documents_url_idx",
        "DROP INDEX {s}.documents_source_fetched_at_idx",
        "DROP INDEX {s}.documents_fetched_at_idx",
        "DROP INDEX {s}.documents_job_request_page_key",
    ),
    "pglz, not lz4": ("ALTER TABLE {s}.documents ALTER COLUMN body SET COMPRESSION pglz",),
    "no compression": ("ALTER TABLE {s}.documents ALTER COLUMN body SET STORAGE EXTERNAL",),
    "json, not jsonb": ("ALTER TABLE {s}.documents ALTER COLUMN body TYPE json",),
}
NO_UPKEEP: Final = frozenset({"latest off", "- request key (unique)", "no secondary index"})


@dataclass(frozen=True, slots=True)
class Sample:
    """One variant's load of ``rows`` documents."""

    cpu_s: float  # the backend's user + system CPU
    wal_bytes: int
    table_bytes: int  # documents, TOAST and indexes included

    def per_row(self, rows: int) -> tuple[float, float, float]:
        return (self.cpu_s / rows * 1e6, self.wal_bytes / rows, self.table_bytes / rows)


def backend_cpu(pid: int) -> float:
    """A process's user + system CPU seconds (a backend reaps no children), from /proc."""
    return procs.parse_stat(Path(f"/proc/{pid}/stat").read_text()).ticks / TICKS


def schema_name(variant: str) -> str:
    return "pgcosts_" + "".join(c if c.isalnum() else "_" for c in variant).strip("_")


def with_search_path(url: str, schema: str) -> str:
    """``url`` with a ``search_path`` server setting (asyncpg passes unknown query parameters
    to the server): the variant's schema first, then public for harvester's functions."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}search_path={schema},public"


async def _make(admin: asyncpg.Connection[asyncpg.Record], variant: str) -> str:
    """The variant's schema: the migrated tables copied, their indexes made again under their
    own names (LIKE would name them anew), then the variant's changes."""
    s = schema_name(variant)
    await admin.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}")
    for table in ("documents", "latest_document_refs"):
        await admin.execute(
            f"CREATE TABLE {s}.{table} (LIKE public.{table} INCLUDING ALL EXCLUDING INDEXES)"
        )
        indexes = await admin.fetch(
            "SELECT pg_get_indexdef(indexrelid) AS def FROM pg_index WHERE indrelid = $1::regclass",
            f"public.{table}",
        )
        for index in indexes:
            await admin.execute(index["def"].replace(" ON public.", f" ON {s}.", 1))
    for statement in VARIANTS[variant]:
        await admin.execute(statement.format(s=s))
    return s


def chunks(kb: int, rows: int, job_id: str) -> list[Chunk]:
    """``rows`` documents of ``kb`` KiB in chunks of about CHUNK_BYTES, as a job's writer
    makes them."""
    body = make_body(kb * 1024)
    per = max(1, CHUNK_BYTES // len(body))
    docs = [Fetched(f"https://api.example.com/items/{i}", 200, body, 1, 1) for i in range(rows)]
    return [Chunk(job_id, "pgcosts", docs[i : i + per]) for i in range(0, rows, per)]


async def load(url: str, schema: str, work: Sequence[Chunk], *, upkeep: bool) -> Sample:
    """Land ``work`` through one connection of a worker's kind; what the server spent."""
    settings = load_settings(database_url=with_search_path(url, schema), db_pool_min=1)
    pool = await store.create_pool(settings.model_copy(update={"db_pool_max": 1}))
    try:
        async with pool.acquire() as conn:
            # For the json variant: json's binary form is its text, as the body is.
            await conn.set_type_codec(
                "json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
            )
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
            before = backend_cpu(pid)
            for chunk in work:
                current = latest.Current.of(chunk.docs)
                records, columns = chunk.doc_records()
                async with store.transaction(conn):
                    await conn.copy_records_to_table("documents", records=records, columns=columns)
                    if upkeep:
                        await latest.keep_current(conn, chunk.job_id, current)
            cpu = backend_cpu(pid) - before
            wal = await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn)
            size = await conn.fetchval(
                "SELECT pg_total_relation_size($1::regclass)", f"{schema}.documents"
            )
    finally:
        await pool.close()
    return Sample(cpu, int(wal), int(size))


async def run(url: str, sizes: Sequence[int], rows: int, repeat: int) -> None:
    await migrate(url)
    admin = await asyncpg.connect(url)
    try:
        for kb in sizes:
            samples: dict[str, list[Sample]] = {v: [] for v in VARIANTS}
            for rep in range(repeat):
                for variant in VARIANTS:
                    schema = await _make(admin, variant)
                    work = chunks(kb, rows, f"pgcosts-{rep}")
                    upkeep = variant not in NO_UPKEEP
                    samples[variant].append(await load(url, schema, work, upkeep=upkeep))
                    await admin.execute(f"DROP SCHEMA {schema} CASCADE")
            print(table(kb, rows, samples))
    finally:
        await admin.close()


def table(kb: int, rows: int, samples: dict[str, list[Sample]]) -> str:
    """Medians per row, and each variant's CPU against the shipped table's (with the upkeep)
    or against "latest off" (without it)."""

    def median(variant: str, i: int) -> float:
        return statistics.median(s.per_row(rows)[i] for s in samples[variant])

    lines = [
        f"{kb} KiB bodies, {rows} rows a run, medians of {len(samples['as shipped'])}",
        f"  {'variant':<26} {'CPU µs/row':>10} {'difference':>10} {'WAL B/row':>10} "
        f"{'size B/row':>10}",
    ]
    for variant in samples:
        base = "as shipped" if variant not in NO_UPKEEP or variant == "latest off" else "latest off"
        cpu = median(variant, 0)
        lines.append(
            f"  {variant:<26} {cpu:>10.1f} {cpu - median(base, 0):>+10.1f} "
            f"{median(variant, 1):>10.0f} {median(variant, 2):>10.0f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgcosts", description=__doc__)
    database.add_argument(parser)
    parser.add_argument("--sizes", default="1,16", help="body sizes in KiB (1,16)")
    parser.add_argument("--rows", type=int, default=4000, help="documents a run (4000)")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved repetitions (5)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="harvester-pgcosts-") as tmp:
        try:
            with database.server(database.one_server(args.database_url), Path(tmp) / "pg") as pg:
                print(asyncio.run(database.describe(pg.url, embedded=pg.embedded)))
                asyncio.run(run(pg.url, sizes, args.rows, args.repeat))
        except database.BenchDatabaseError as exc:
            print(f"python -m bench.pgcosts: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
