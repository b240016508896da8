"""Postgres for harvester: the pool's life, the one boundary where asyncpg errors become
`StoreError`, and the small helpers every module that queries shares (command status, the
stored form of a URL, the requests a job already has outcomes for). Chunk writes are
`worker.engine.writes`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Union

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from worker.engine.requests import RequestKey
from worker.errors import ConfigError, SchemaError, StoreError
from worker.logs import redact
from worker.settings import Settings

_EXISTING = """
SELECT url, method, body_hash FROM documents WHERE job_id = $1
UNION ALL
SELECT url, method, body_hash FROM fetch_failures WHERE job_id = $1
"""

CLOSE_TIMEOUT_S = 10.0
# Writers of a job never hold more connections than the pool has, so waiting longer than this
# for one means Postgres is in trouble: fail the chunk (it is retried) rather than hang.
ACQUIRE_TIMEOUT_S = 60.0

Conn = Union["asyncpg.Connection[Any]", "PoolConnectionProxy[Any]"]

# Errors that mean "the connection or server went away", worth retrying the whole chunk.
CONNECTION_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
    OSError,
    TimeoutError,
)


# Everything asyncpg or the socket can raise at us; modules that query Postgres catch this.
DB_ERRORS = (asyncpg.PostgresError, *CONNECTION_ERRORS)


# What Postgres says when an object harvester's migrations create is missing.
_MISSING_TABLE = (asyncpg.UndefinedTableError,)
_MISSING_OTHER = (asyncpg.UndefinedColumnError, asyncpg.UndefinedFunctionError)
# What asyncpg meets when its named prepared statements are gone or doubled: a pooler in
# transaction mode lent it another server connection (or reset the one it had).
_STATEMENTS_LOST = (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError)
# Refusals of the connection itself that no retry changes: wrong password, no such role or
# database.
_REFUSED = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)


def store_error(what: str, exc: BaseException) -> StoreError:
    """Translate an asyncpg/OS error; only connection-class failures are worth a quick retry.
    A missing table, column or function is a `SchemaError`: the database needs migrating. A lost
    prepared statement names HARVESTER_PGBOUNCER (a pgbouncer told to ignore the startup
    parameters it would otherwise refuse)."""
    if isinstance(exc, _MISSING_TABLE):
        return SchemaError("the database has no harvester tables yet: run harvester migrate")
    if isinstance(exc, _MISSING_OTHER):
        return SchemaError(
            f"the database's tables are older than this harvester ({exc}): run harvester migrate"
        )
    if isinstance(exc, _STATEMENTS_LOST):
        return StoreError(
            f"{what}: {exc}: is DATABASE_URL a pgbouncer in transaction mode? "
            "Then set HARVESTER_PGBOUNCER=true",
            transient=False,
        )
    transient = isinstance(exc, CONNECTION_ERRORS)
    return StoreError(f"{what}: {type(exc).__name__}: {exc}", transient=transient)


# What pgbouncer answers a startup parameter other than the few it tracks (statement_timeout...).
_PGBOUNCER_REFUSAL = "unsupported startup parameter"


def connect_error(dsn: str, exc: BaseException) -> ConfigError | StoreError:
    """Translate a failure to connect to ``dsn``: `ConfigError` when Postgres refused the
    credentials or the database name, else a transient `StoreError`. Both name the URL with its
    password hidden."""
    if isinstance(exc, _REFUSED):
        return ConfigError(f"DATABASE_URL: Postgres at {redact(dsn)} refused the connection: {exc}")
    if isinstance(exc, asyncpg.ProtocolViolationError) and _PGBOUNCER_REFUSAL in str(exc):
        return ConfigError(
            f"DATABASE_URL: {redact(dsn)} is a pgbouncer ({exc}): set HARVESTER_PGBOUNCER=true"
        )
    if isinstance(exc, ValueError):  # asyncpg refusing an option of the DSN (sslmode=bogus...)
        return ConfigError(f"DATABASE_URL cannot be used: {exc}")
    return StoreError(
        f"Postgres is unavailable at {redact(dsn)} (DATABASE_URL): {type(exc).__name__}: {exc}"
    )


@contextmanager
def translated(what: str) -> Iterator[None]:
    """The one boundary between asyncpg and harvester: errors of the Postgres work inside the
    block come out as `StoreError` saying ``what`` could not be done.

        with store.translated("cannot list failures"):
            rows = await pool.fetch(...)
    """
    try:
        yield
    except DB_ERRORS as exc:
        raise store_error(what, exc) from exc


def rows_affected(status: str) -> int:
    """The row count of a command status such as ``INSERT 0 12``, ``UPDATE 3`` or ``DELETE 0``."""
    return int(status.rsplit(" ", 1)[-1])


def _encode_jsonb(body: bytes) -> bytes:
    # jsonb's binary format is a version byte followed by the JSON text: the body goes to
    # Postgres exactly as fetched, with no decode and re-encode in Python.
    return b"\x01" + body


def _decode_jsonb(data: bytes) -> object:
    return orjson.loads(data[1:])


if TYPE_CHECKING:
    _Connection = asyncpg.Connection[asyncpg.Record]
else:
    _Connection = asyncpg.Connection


class HarvesterConnection(_Connection):
    """A pool's connection, knowing what each of its transactions begins with (`transaction`)."""

    __slots__ = ("begin",)

    begin: str


def _timeouts(settings: Settings) -> dict[str, str]:
    """The server-side bounds on a statement and on an idle transaction, in milliseconds."""
    return {
        "statement_timeout": str(int(settings.db_command_timeout * 1000)),
        "idle_in_transaction_session_timeout": str(int(settings.db_command_timeout * 2000)),
    }


def _set_local(timeouts: dict[str, str]) -> str:
    return "; ".join(f"SET LOCAL {name} = {value}" for name, value in timeouts.items())


async def _init_connection(conn: asyncpg.Connection[Any], *, begin: str) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    assert isinstance(conn, HarvesterConnection)
    conn.begin = begin


async def _no_reset(conn: asyncpg.Connection[Any]) -> None:
    """What a released connection needs beyond the ROLLBACK asyncpg sends first when a
    transaction was left open: nothing, as SQLAlchemy's pools do by default.

    asyncpg's own reset is one more round trip per release (advisory unlock, CLOSE ALL,
    UNLISTEN, RESET ALL) for session state harvester never makes: its locks are
    transaction-scoped, its cursors and staging tables end with their transaction, it does not
    LISTEN, and its settings are the connection's startup parameters (or SET LOCAL). Behind
    pgbouncer that query would also run on whichever server connection pgbouncer lends at that
    moment (its RESET ALL would undo the application_name pgbouncer set there, unknown to it)."""


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """Create the process's pool, connecting eagerly so a bad DATABASE_URL fails at start-up.

    Directly to Postgres, the timeouts are startup parameters of each connection. Behind
    pgbouncer in transaction mode (HARVESTER_PGBOUNCER), a client connection has no server
    session of its own: no startup parameters (pgbouncer refuses them), no named prepared
    statements (asyncpg's statement cache off), and the timeouts are sent as ``SET LOCAL`` at
    the start of each transaction (`transaction`). Either way a released connection gets no
    reset query (`_no_reset`).
    """
    timeouts = _timeouts(settings)
    begin = _set_local(timeouts) if settings.pgbouncer else ""
    server_settings = {"application_name": "harvester"}
    if not settings.pgbouncer:
        server_settings.update(timeouts)
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout,
            timeout=settings.connect_timeout,
            init=functools.partial(_init_connection, begin=begin),
            connection_class=HarvesterConnection,
            statement_cache_size=0 if settings.pgbouncer else 100,  # 100: asyncpg's default
            reset=_no_reset,
            server_settings=server_settings,
        )
    except (*DB_ERRORS, ValueError) as exc:
        raise connect_error(settings.database_url, exc) from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def transaction(conn: Conn) -> AsyncIterator[None]:
    """``conn.transaction()``, begun with what the pool's connections need at the start of
    each transaction (behind pgbouncer, the timeouts as ``SET LOCAL``). Every transaction
    harvester runs on a pool's connection goes through here; savepoints inside one need not.
    """
    async with conn.transaction():
        # A pool's connection proxies attributes to its HarvesterConnection; a connection of
        # asyncpg.connect has none to send.
        begin: str = getattr(conn, "begin", "")
        if begin:
            await conn.execute(begin)
        yield


@asynccontextmanager
async def open_pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """`create_pool`, closed on exit (as `worker.queue.client.open_queue` is for Redis)."""
    pool = await create_pool(settings)
    try:
        yield pool
    finally:
        await close_pool(pool)


# How much of an over-long URL its row keeps, before the hash that tells it apart.
STORED_URL_PREFIX = 1024


def stored_url(url: str, max_length: int) -> str:
    """The form in which ``url`` is stored in a row: itself, or, when it is longer than
    ``max_length`` (HARVESTER_MAX_URL_LENGTH, so it can only have failed), a bounded prefix and
    the SHA-256 of the whole URL. The one definition: rows are written in this form and
    `existing_requests` is compared with payload URLs mapped through it."""
    if len(url) <= max_length:
        return url
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{url[: min(max_length, STORED_URL_PREFIX)]}…#sha256={digest}"


async def existing_requests(pool: asyncpg.Pool, job_id: str) -> set[RequestKey]:
    """The requests of ``job_id`` that already have an outcome (from an earlier, interrupted
    run), as `RequestKey`s of their URL in its `stored_url` form."""
    with translated("cannot read existing outcomes"):
        rows = await pool.fetch(_EXISTING, job_id)
    return {(r["url"], r["method"], r["body_hash"]) for r in rows}


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully; terminate connections that do not close in time."""
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
    except (Exception, asyncio.CancelledError):
        pool.terminate()
        raise
