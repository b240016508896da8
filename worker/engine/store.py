"""Loading: the asyncpg pool and idempotent chunked writes of documents and failures.

A chunk is COPYed straight into the tables in one transaction, with the source states of a
scheduled poll; if some of its rows are there already (a retried write), it goes through
per-connection temporary staging tables and ``INSERT ... ON CONFLICT DO NOTHING`` instead. So a
chunk lands whole or not at all and a re-run of a job adds no row. asyncpg errors are
translated to `StoreError` here.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar, Union

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from worker.engine.fetch import Failed, Fetched, clean_detail
from worker.engine.polling import SourceUpdate
from worker.errors import ConfigError, StoreError
from worker.settings import Settings

_DOC_COLUMNS = ("job_id", "url", "source", "status", "body", "elapsed_ms", "attempts")
_FAIL_COLUMNS = ("job_id", "url", "source", "error", "status", "attempts", "detail")

_CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS harvester_stage_documents (
    job_id text, url text, source text, status integer, body jsonb,
    elapsed_ms integer, attempts integer
) ON COMMIT DELETE ROWS;
-- Out of line but uncompressed: staged bodies are compressed once, in documents.
ALTER TABLE harvester_stage_documents ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TEMP TABLE IF NOT EXISTS harvester_stage_failures (
    job_id text, url text, source text, error text, status integer,
    attempts integer, detail text
) ON COMMIT DELETE ROWS;
"""

_MOVE_DOCUMENTS = """
INSERT INTO documents (job_id, url, source, status, body, elapsed_ms, attempts)
SELECT job_id, url, source, status, body, elapsed_ms, attempts FROM harvester_stage_documents
ON CONFLICT (job_id, harvester_url_key(url)) DO NOTHING
"""

_MOVE_FAILURES = """
INSERT INTO fetch_failures (job_id, url, source, error, status, attempts, detail)
SELECT job_id, url, source, error, status, attempts, detail FROM harvester_stage_failures
ON CONFLICT (job_id, harvester_url_key(url)) DO NOTHING
"""

_INSERT_DOCUMENT = """
INSERT INTO documents (job_id, url, source, status, body, elapsed_ms, attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (job_id, harvester_url_key(url)) DO NOTHING
"""

# A poll's source states, one statement per chunk, in the chunk's transaction: a document and
# the content hash that says it is current land together or not at all.
_UPDATE_SOURCES = """
UPDATE sources AS s SET
    last_polled_at = now(),
    last_status = v.status,
    last_outcome = v.outcome,
    last_error = v.error,
    etag = v.etag,
    last_modified = v.last_modified,
    content_hash = v.content_hash,
    document_job_id = CASE WHEN v.document THEN $1 ELSE s.document_job_id END,
    consecutive_failures = v.failures,
    last_success_at = CASE WHEN v.ok THEN now() ELSE s.last_success_at END,
    next_due_at = now() + make_interval(secs => v.delay),
    poll_job_id = NULL,
    claimed_until = NULL
FROM unnest($2::bigint[], $3::text[], $4::integer[], $5::text[], $6::text[], $7::text[],
            $8::bytea[], $9::boolean[], $10::boolean[], $11::integer[], $12::float8[])
    AS v(id, outcome, status, error, etag, last_modified, content_hash, ok, document, failures,
         delay)
-- Only while this job holds the claim (or none is held): a poll that outlived its claim must not
-- overwrite the state a newer poll of the same source recorded.
WHERE s.id = v.id AND (s.poll_job_id IS NULL OR s.poll_job_id = $1)
"""

_EXISTING = """
SELECT url FROM documents WHERE job_id = $1
UNION ALL
SELECT url FROM fetch_failures WHERE job_id = $1
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


# What Postgres raises for a body its jsonb input refuses: data errors (not JSON, bad UTF-8,
# \u0000, a number out of range) and program limits (nesting deeper than its stack allows).
BODY_REFUSED = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)

# Everything asyncpg or the socket can raise at us; modules that query Postgres catch this.
DB_ERRORS = (asyncpg.PostgresError, *CONNECTION_ERRORS)


def store_error(what: str, exc: BaseException) -> StoreError:
    """Translate an asyncpg/OS error; only connection-class failures are worth a quick retry."""
    transient = isinstance(exc, CONNECTION_ERRORS)
    return StoreError(f"{what}: {type(exc).__name__}: {exc}", transient=transient)


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


@dataclass(frozen=True, slots=True)
class Written:
    """Rows a chunk added; fewer than given means they were there already."""

    documents: int
    failures: int
    refused: tuple[Failed, ...] = ()


def _encode_jsonb(body: bytes) -> bytes:
    # jsonb's binary format is a version byte followed by the JSON text: the body goes to
    # Postgres exactly as fetched, with no decode and re-encode in Python.
    return b"\x01" + body


def _decode_jsonb(data: bytes) -> object:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    # Staging tables live as long as the connection; ON COMMIT DELETE ROWS empties them.
    await conn.execute(_CREATE_STAGING)


async def create_pool(settings: Settings) -> asyncpg.Pool:
    """Create the process's pool, connecting eagerly so a bad DATABASE_URL fails at start-up."""
    try:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            command_timeout=settings.db_command_timeout,
            timeout=settings.connect_timeout,
            init=_init_connection,
            server_settings={
                "application_name": "harvester",
                "statement_timeout": str(int(settings.db_command_timeout * 1000)),
                "idle_in_transaction_session_timeout": str(int(settings.db_command_timeout * 2000)),
            },
        )
    except DB_ERRORS as exc:
        raise StoreError(f"cannot connect to Postgres: {type(exc).__name__}: {exc}") from exc
    except ValueError as exc:  # asyncpg refusing an option of the DSN (sslmode=bogus...)
        raise ConfigError(f"DATABASE_URL cannot be used: {exc}") from exc
    assert pool is not None
    return pool


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
    `existing_urls` is compared with payload URLs mapped through it."""
    if len(url) <= max_length:
        return url
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{url[: min(max_length, STORED_URL_PREFIX)]}…#sha256={digest}"


async def existing_urls(pool: asyncpg.Pool, job_id: str) -> set[str]:
    """URLs of ``job_id`` that already have an outcome (from an earlier, interrupted run), in
    their `stored_url` form."""
    with translated("cannot read existing outcomes"):
        rows = await pool.fetch(_EXISTING, job_id)
    return {r["url"] for r in rows}


def _doc_records(
    job_id: str, source: str | None, docs: Iterable[Fetched]
) -> list[tuple[object, ...]]:
    return [(job_id, d.url, source, d.status, d.body, d.elapsed_ms, d.attempts) for d in docs]


def _fail_records(
    job_id: str, source: str | None, failures: Iterable[Failed]
) -> list[tuple[object, ...]]:
    return [(job_id, f.url, source, f.kind, f.status, f.attempts, f.detail) for f in failures]


_Outcome = TypeVar("_Outcome", Fetched, Failed)


def _in_stored_form(rows: Sequence[_Outcome], max_url_length: int) -> Sequence[_Outcome]:
    """``rows`` with each URL in its `stored_url` form (the same objects when all are short)."""
    if all(len(r.url) <= max_url_length for r in rows):
        return rows
    return [replace(r, url=stored_url(r.url, max_url_length)) for r in rows]


async def write_chunk(
    pool: asyncpg.Pool,
    job_id: str,
    source: str | None,
    docs: Sequence[Fetched],
    failures: Sequence[Failed],
    updates: Sequence[SourceUpdate] = (),
    *,
    max_url_length: int,
) -> Written:
    """Land one chunk atomically, with the source ``updates`` of a scheduled poll. A body
    Postgres refuses becomes a failure, not a failed chunk. URLs longer than
    ``max_url_length`` are stored in their short `stored_url` form."""
    docs = _in_stored_form(docs, max_url_length)
    failures = _in_stored_form(failures, max_url_length)
    try:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            try:
                try:
                    return await _land(conn, _copy_direct, job_id, source, docs, failures, updates)
                except asyncpg.UniqueViolationError:
                    # Some rows are there already (a retried write whose commit did land):
                    # go through staging, where ON CONFLICT skips them.
                    return await _land(conn, _copy_chunk, job_id, source, docs, failures, updates)
            except BODY_REFUSED:
                # Some body passed our JSON check but not Postgres' (a number jsonb cannot hold,
                # or a large body, which only Postgres parses). Find it row by row; the rest of
                # the chunk still lands.
                return await _write_rows(conn, job_id, source, docs, failures, updates)
    except DB_ERRORS as exc:
        raise store_error("write failed", exc) from exc
    except (UnicodeError, ValueError, TypeError) as exc:
        # asyncpg could not encode a row: a bug on our side, never worth failing a job for good.
        raise StoreError(f"write failed: {type(exc).__name__}: {exc}", transient=False) from exc


_Copy = Callable[[Conn, str, str | None, Sequence[Fetched], Sequence[Failed]], Awaitable[Written]]


async def _land(
    conn: Conn,
    copy: _Copy,
    job_id: str,
    source: str | None,
    docs: Sequence[Fetched],
    failures: Sequence[Failed],
    updates: Sequence[SourceUpdate],
) -> Written:
    """One transaction: the chunk's rows by ``copy``, then the source states of its polls."""
    async with conn.transaction():
        written = await copy(conn, job_id, source, docs, failures)
        await _update_sources(conn, job_id, updates)
    return written


async def _copy_documents(
    conn: Conn, table: str, job_id: str, source: str | None, docs: Sequence[Fetched]
) -> None:
    await conn.copy_records_to_table(
        table, records=_doc_records(job_id, source, docs), columns=_DOC_COLUMNS
    )


async def _copy_failures(
    conn: Conn, table: str, job_id: str, source: str | None, failures: Sequence[Failed]
) -> None:
    await conn.copy_records_to_table(
        table, records=_fail_records(job_id, source, failures), columns=_FAIL_COLUMNS
    )


async def _stage_failures(
    conn: Conn, job_id: str, source: str | None, failures: Sequence[Failed]
) -> int:
    """Land failures through staging, skipping those already there; return rows added."""
    await _copy_failures(conn, "harvester_stage_failures", job_id, source, failures)
    return rows_affected(await conn.execute(_MOVE_FAILURES))


async def _copy_direct(
    conn: Conn,
    job_id: str,
    source: str | None,
    docs: Sequence[Fetched],
    failures: Sequence[Failed],
) -> Written:
    # The fast path: the pipeline already skips URLs that have an outcome, so a chunk almost
    # never conflicts, and COPY straight into the tables parses and compresses each body once
    # (staging costs a second TOAST compression). A conflict aborts it; see write_chunk.
    if docs:
        await _copy_documents(conn, "documents", job_id, source, docs)
    if failures:
        await _copy_failures(conn, "fetch_failures", job_id, source, failures)
    return Written(len(docs), len(failures))


async def _copy_chunk(
    conn: Conn,
    job_id: str,
    source: str | None,
    docs: Sequence[Fetched],
    failures: Sequence[Failed],
) -> Written:
    n_docs = n_fail = 0
    if docs:
        await _copy_documents(conn, "harvester_stage_documents", job_id, source, docs)
        n_docs = rows_affected(await conn.execute(_MOVE_DOCUMENTS))
    if failures:
        n_fail = await _stage_failures(conn, job_id, source, failures)
    return Written(n_docs, n_fail)


async def _update_sources(conn: Conn, job_id: str, updates: Sequence[SourceUpdate]) -> None:
    if not updates:
        return
    await conn.execute(
        _UPDATE_SOURCES,
        job_id,
        [u.source_id for u in updates],
        [u.outcome for u in updates],
        [u.status for u in updates],
        [u.error for u in updates],
        [u.etag for u in updates],
        [u.last_modified for u in updates],
        [u.content_hash for u in updates],
        [u.ok for u in updates],
        [u.document for u in updates],
        [u.consecutive_failures for u in updates],
        [u.delay_s for u in updates],
    )


async def _write_rows(
    conn: Conn,
    job_id: str,
    source: str | None,
    docs: Sequence[Fetched],
    failures: Sequence[Failed],
    updates: Sequence[SourceUpdate] = (),
) -> Written:
    refused: list[Failed] = []
    n_docs = 0
    async with conn.transaction():
        for d in docs:
            try:
                async with conn.transaction():  # a savepoint per row
                    status = await conn.execute(
                        _INSERT_DOCUMENT,
                        job_id,
                        d.url,
                        source,
                        d.status,
                        d.body,
                        d.elapsed_ms,
                        d.attempts,
                    )
                    n_docs += rows_affected(status)
            except BODY_REFUSED as exc:
                detail = clean_detail(f"Postgres refused the body: {exc}")
                refused.append(Failed(d.url, "invalid_json", detail, d.status, d.attempts))
        all_failures = [*failures, *refused]
        n_fail = await _stage_failures(conn, job_id, source, all_failures) if all_failures else 0
        if refused:
            why = {f.url: f.detail for f in refused}
            updates = [u.refused(why[u.url]) if u.url in why else u for u in updates]
        await _update_sources(conn, job_id, updates)
    return Written(n_docs, n_fail, tuple(refused))


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully; terminate connections that do not close in time."""
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_S)
    except (Exception, asyncio.CancelledError):
        pool.terminate()
        raise
