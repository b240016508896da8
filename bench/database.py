"""The bench's own database on a Postgres server it did not start (`BENCH_DATABASE_URL`).

The bench empties its tables between runs, so it never works in the database a URL names: it
connects there only to create ``harvester_bench`` beside it, marked with a comment as the
bench's, and drops it when done. A ``harvester_bench`` without the mark, or one another session
is connected to, is refused: it is someone else's, or another bench's in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, NamedTuple

import asyncpg
from yarl import URL

from bench import procs
from worker.devtools.embedded import EmbeddedPostgres

NAME = "harvester_bench"
MARK = "harvester bench: created, emptied and dropped by python -m bench"


class BenchDatabaseError(Exception):
    """The server cannot give the bench a database of its own; the message says why."""


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (user, host, port and options kept)."""
    parsed = URL(url)
    return str(parsed.with_path(f"/{name}").with_query(parsed.query))


async def create(url: str) -> str:
    """The URL of a fresh bench database on ``url``'s server: created and marked, after
    dropping the bench's own left from an interrupted run."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # OSError: refused or timed out; ValueError: a malformed URL.
        raise BenchDatabaseError(f"cannot connect to BENCH_DATABASE_URL: {exc}") from exc
    try:
        found = await conn.fetchrow(
            "SELECT shobj_description(oid, 'pg_database') AS mark, "
            "(SELECT count(*) FROM pg_stat_activity a WHERE a.datid = d.oid) AS sessions "
            "FROM pg_database d WHERE datname = $1",
            NAME,
        )
        if found is not None and found["mark"] != MARK:
            raise BenchDatabaseError(
                f"database {NAME} exists and is not the bench's (no mark): left alone"
            )
        if found is not None and found["sessions"]:
            raise BenchDatabaseError(f"database {NAME} is in use (another bench run?)")
        try:
            if found is not None:
                await conn.execute(f"DROP DATABASE {NAME}")
            await conn.execute(f"CREATE DATABASE {NAME}")
        except asyncpg.PostgresError as exc:
            raise BenchDatabaseError(f"cannot create database {NAME}: {exc}") from exc
        await conn.execute(f"COMMENT ON DATABASE {NAME} IS '{MARK}'")
    finally:
        await conn.close()
    return with_database(url, NAME)


async def drop(url: str) -> None:
    """Drop the bench's database from ``url``'s server (``url`` names another database)."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        mark = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            NAME,
        )
        if mark == MARK:
            await conn.execute(f"DROP DATABASE {NAME}")
    finally:
        await conn.close()


async def postmaster(url: str) -> int | None:
    """The pid of the server's postmaster, when it runs on this machine and /proc shows it (a
    backend's parent); None otherwise, and the server's CPU is not measured."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        return procs.parent_server(backend)
    finally:
        await conn.close()


async def describe(url: str, *, embedded: bool) -> str:
    """What the server is, for the report: version, where, and its durability settings (which
    decide what a commit costs). Never the URL itself: it may hold a password."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    where = "embedded" if embedded else f"at {URL(url).host or 'a socket'}:{URL(url).port}"
    return f"PostgreSQL {version.split()[0]} {where} (fsync {fsync}, synchronous_commit {sync})"


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--database-url``, one server (None: an embedded one), for the measurements that run on
    one; read it with `one_server`."""
    parser.add_argument(
        "--database-url",
        default=None,
        help="a Postgres server to use instead of an embedded one (default: BENCH_DATABASE_URL); "
        f"the bench creates, empties and drops a database {NAME} there",
    )


def one_server(given: str | None) -> str | None:
    """The server `add_argument` named, else BENCH_DATABASE_URL's (None: embedded); raises
    `BenchDatabaseError` when the variable names several (only `python -m bench` takes more)."""
    servers = servers_of(None if given is None else [given])
    if len(servers) > 1:
        raise BenchDatabaseError(
            f"BENCH_DATABASE_URL names {len(servers)} servers; this measurement runs on one: "
            "pass --database-url"
        )
    return servers[0]


EMBEDDED: Final = "embedded"  # in a list of servers: an embedded PostgreSQL of the bench's own


def add_servers_argument(parser: argparse.ArgumentParser) -> None:
    """``--database-url``, repeatable, for `python -m bench`: every server named is measured, in
    the same repetitions (``embedded`` names an embedded one). Defaults to the whitespace-
    separated words of BENCH_DATABASE_URL, or an embedded server alone."""
    parser.add_argument(
        "--database-url",
        action="append",
        default=None,
        metavar="URL",
        help="a Postgres server to measure on, or 'embedded' (repeatable: each is measured, "
        "interleaved; default: BENCH_DATABASE_URL, or embedded); the bench creates, empties and "
        f"drops a database {NAME} on a server it did not start",
    )


def servers_of(given: list[str] | None) -> list[str | None]:
    """The servers `add_servers_argument` named, as `server` takes them (None: embedded), each
    once: two URLs of one server (another database, say) would share its `NAME` database."""
    words = given or os.environ.get("BENCH_DATABASE_URL", "").split() or [EMBEDDED]
    servers: dict[str, str] = {}
    for word in words:  # the first naming of each server, in the order given
        servers.setdefault(word if word == EMBEDDED else with_database(word, NAME), word)
    return [None if w == EMBEDDED else w for w in servers.values()]


class Server(NamedTuple):
    url: str  # the database the bench works in
    embedded: bool


@contextmanager
def server(url: str | None, folder: Path) -> Iterator[Server]:
    """The bench's Postgres: an embedded one (durable: fsync on) in ``folder`` when ``url`` is
    None, else a database of its own on ``url``'s server (`create`); stopped, or dropped, on the
    way out. Raises `BenchDatabaseError` when the server cannot give it one."""
    if url is not None:
        db = asyncio.run(create(url))
        try:
            yield Server(db, embedded=False)
        finally:
            asyncio.run(drop(url))
        return
    pg = EmbeddedPostgres(folder, durable=True)
    try:
        yield Server(pg.start(), embedded=True)
    finally:
        pg.stop("fast")
