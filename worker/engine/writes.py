"""Landing a chunk (`worker.engine.chunks`): COPY of a job's documents and failures, with its
polls' source states, in one transaction.

A chunk is COPYed straight into the tables; if some of its rows are there already (a retried
write whose commit did land), it goes through temporary staging tables, made in its transaction
and dropped at its commit (no session state, so it works behind pgbouncer too), and
``INSERT ... ON CONFLICT DO NOTHING`` instead; if Postgres refuses a body, the chunk is written
row by row and that body becomes an ``invalid_json`` failure. So a chunk lands whole or not at
all, a re-run of a job adds no row, and one bad body never sinks its chunk. Every path keeps
`latest_document_refs` current for the chunk's documents in the same transaction
(`worker.engine.latest`). A chunk that carries
its run's lease lands only while that run holds it (`worker.engine.leases`): the check is the
transaction's first statement, and a run that lost its job raises `LeaseLostError` there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import asyncpg

from worker.engine import latest, leases, records
from worker.engine.bodies import clean_detail
from worker.engine.chunks import Chunk, Written
from worker.engine.outcomes import Failed
from worker.engine.polling import SourceUpdate
from worker.engine.records import Extracted
from worker.engine.store import (
    ACQUIRE_TIMEOUT_S,
    DB_ERRORS,
    Conn,
    rows_affected,
    store_error,
    transaction,
)
from worker.errors import StoreError

# Staging for a chunk that conflicts, made inside its transaction and gone at its end: a
# connection behind pgbouncer in transaction mode has no session to keep tables in.
_STAGE_DOCUMENTS = """
CREATE TEMP TABLE IF NOT EXISTS harvester_stage_documents (
    job_id text, url text, source text, status integer, body jsonb,
    elapsed_ms integer, attempts integer,
    method text NOT NULL DEFAULT 'GET', body_hash bytea, request jsonb,
    page integer, page_url text, next_url text
) ON COMMIT DROP;
-- Out of line but uncompressed: staged bodies are compressed once, in documents.
ALTER TABLE harvester_stage_documents ALTER COLUMN body SET STORAGE EXTERNAL;
"""

_STAGE_FAILURES = """
CREATE TEMP TABLE IF NOT EXISTS harvester_stage_failures (
    job_id text, url text, source text, auth text, error text, status integer,
    attempts integer, detail text,
    method text NOT NULL DEFAULT 'GET', body_hash bytea, request jsonb,
    page integer, page_url text
) ON COMMIT DROP
"""

# The unique key of both tables is (job_id, harvester_request_key(...)): sql/006_requests.sql.
_MOVE_DOCUMENTS = """
INSERT INTO documents (job_id, url, source, status, body, elapsed_ms, attempts, method, body_hash,
                       request, page, page_url, next_url)
SELECT job_id, url, source, status, body, elapsed_ms, attempts, method, body_hash, request, page,
       page_url, next_url
FROM harvester_stage_documents
ON CONFLICT (job_id, harvester_request_key(url, method, body_hash), COALESCE(page, 0)) DO NOTHING
"""

_MOVE_FAILURES = """
INSERT INTO fetch_failures (job_id, url, source, auth, error, status, attempts, detail, method,
                            body_hash, request, page, page_url)
SELECT job_id, url, source, auth, error, status, attempts, detail, method, body_hash, request,
       page, page_url
FROM harvester_stage_failures
ON CONFLICT (job_id, harvester_request_key(url, method, body_hash)) DO NOTHING
"""

_INSERT_DOCUMENT = """
INSERT INTO documents (job_id, url, source, status, body, elapsed_ms, attempts, method, body_hash,
                       request, page, page_url, next_url)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (job_id, harvester_request_key(url, method, body_hash), COALESCE(page, 0)) DO NOTHING
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
    since_value = COALESCE(v.since_value, s.since_value),
    poll_job_id = NULL,
    claimed_until = NULL
FROM unnest($2::bigint[], $3::text[], $4::integer[], $5::text[], $6::text[], $7::text[],
            $8::bytea[], $9::boolean[], $10::boolean[], $11::integer[], $12::float8[],
            $13::text[])
    AS v(id, outcome, status, error, etag, last_modified, content_hash, ok, document, failures,
         delay, since_value)
-- Only while this job holds the claim (or none is held): a poll that outlived its claim must not
-- overwrite the state a newer poll of the same source recorded.
WHERE s.id = v.id AND (s.poll_job_id IS NULL OR s.poll_job_id = $1)
"""

# What Postgres raises for a body its jsonb input refuses: data errors (not JSON, bad UTF-8,
# \u0000, a number out of range) and program limits (nesting deeper than its stack allows).
BODY_REFUSED = (asyncpg.DataError, asyncpg.ProgramLimitExceededError)


async def write_chunk(pool: asyncpg.Pool, chunk: Chunk, *, max_url_length: int) -> Written:
    """Land ``chunk`` atomically (see the module docstring). URLs longer than
    ``max_url_length`` are stored in their short `stored_url` form. Raises `StoreError`."""
    chunk = chunk.stored(max_url_length)
    # CPU work, done before a connection is taken; nothing at all for a job without records.
    found = None if chunk.records is None else chunk.records.extract(chunk.docs)
    current = latest.Current.of(chunk.docs)
    try:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            try:
                try:
                    return await _land(conn, _copy_direct, chunk, found, current)
                except asyncpg.UniqueViolationError:
                    # Some rows are there already: staging, where ON CONFLICT skips them.
                    return await _land(conn, _copy_staged, chunk, found, current)
            except BODY_REFUSED:
                # A body passed our JSON check but not Postgres' (a number jsonb cannot hold,
                # or a large body, which only Postgres parses): find it row by row.
                return await _write_rows(conn, chunk, found, current)
    except DB_ERRORS as exc:
        raise store_error("write failed", exc) from exc
    except (UnicodeError, ValueError, TypeError) as exc:
        # asyncpg could not encode a row: a bug on our side, never worth failing a job for good.
        raise StoreError(f"write failed: {type(exc).__name__}: {exc}", transient=False) from exc


_Copy = Callable[[Conn, Chunk], Awaitable[Written]]


async def _land(
    conn: Conn, copy: _Copy, chunk: Chunk, found: Extracted | None, current: latest.Current
) -> Written:
    """One transaction: the lease check, the chunk's rows by ``copy``, the source states of
    its polls, then its records."""
    async with transaction(conn):
        await _fence(conn, chunk)
        written = await copy(conn, chunk)
        await latest.keep_current(conn, chunk.job_id, current)
        await _update_sources(conn, chunk.job_id, chunk.updates)
        return await _upsert_records(conn, chunk, found, written)


async def _upsert_records(
    conn: Conn, chunk: Chunk, found: Extracted | None, written: Written
) -> Written:
    if found is None or chunk.source is None:  # intakes refuse records without a source
        return written
    n = await records.upsert(conn, chunk.job_id, chunk.source, found)
    return replace(written, records=n, record_failures=tuple(f.kind for f in found.failures))


async def _fence(conn: Conn, chunk: Chunk) -> None:
    if chunk.lease is not None:
        await leases.check(conn, chunk.lease)


async def _copy_direct(conn: Conn, chunk: Chunk) -> Written:
    # The fast path: the pipeline already skips URLs that have an outcome, so a chunk almost
    # never conflicts, and COPY straight into the tables parses and compresses each body once
    # (staging costs a second TOAST compression). A conflict aborts it; see write_chunk.
    if chunk.docs:
        records, columns = chunk.doc_records()
        await conn.copy_records_to_table("documents", records=records, columns=columns)
    if chunk.fails:
        records, columns = chunk.fail_records(chunk.fails)
        await conn.copy_records_to_table("fetch_failures", records=records, columns=columns)
    return Written(len(chunk.docs), len(chunk.fails))


async def _copy_staged(conn: Conn, chunk: Chunk) -> Written:
    n_docs = n_fail = 0
    if chunk.docs:
        records, columns = chunk.doc_records()
        await conn.execute(_STAGE_DOCUMENTS)
        await conn.copy_records_to_table(
            "harvester_stage_documents", records=records, columns=columns
        )
        n_docs = rows_affected(await conn.execute(_MOVE_DOCUMENTS))
    if chunk.fails:
        n_fail = await _stage_failures(conn, chunk, chunk.fails)
    return Written(n_docs, n_fail)


async def _stage_failures(conn: Conn, chunk: Chunk, fails: Sequence[Failed]) -> int:
    """Land ``fails`` through staging, skipping those already there; return rows added."""
    records, columns = chunk.fail_records(fails)
    await conn.execute(_STAGE_FAILURES)
    await conn.copy_records_to_table("harvester_stage_failures", records=records, columns=columns)
    return rows_affected(await conn.execute(_MOVE_FAILURES))


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
        [u.since_value for u in updates],
    )


async def _write_rows(
    conn: Conn, chunk: Chunk, found: Extracted | None, current: latest.Current
) -> Written:
    """The slow path: each document in a savepoint of its own, so a body Postgres refuses
    becomes an invalid_json failure and the rest of the chunk lands."""
    refused: list[Failed] = []
    n_docs = 0
    async with transaction(conn):
        await _fence(conn, chunk)
        for d in chunk.docs:
            try:
                async with conn.transaction():  # a savepoint per row
                    n_docs += rows_affected(
                        await conn.execute(_INSERT_DOCUMENT, *chunk.doc_record(d))
                    )
            except BODY_REFUSED as exc:
                detail = clean_detail(f"Postgres refused the body: {exc}")
                refused.append(
                    Failed(
                        d.url,
                        "invalid_json",
                        detail,
                        d.status,
                        d.attempts,
                        request=d.request,
                        page=d.page,
                        page_url=d.page_url,
                    )
                )
        await latest.keep_current(conn, chunk.job_id, current)
        fails = [*chunk.fails, *refused]
        n_fail = await _stage_failures(conn, chunk, fails) if fails else 0
        updates = chunk.updates
        if refused:
            why = {f.url: f.detail for f in refused}
            updates = [u.refused(why[u.url]) if u.url in why else u for u in updates]
        await _update_sources(conn, chunk.job_id, updates)
        if found is not None and refused:  # a refused body's records do not land either
            gone = {(f.url, f.page) for f in refused}
            found = Extracted(
                [r for r in found.records if (r.url, r.page) not in gone],
                [f for f in found.failures if (f.url, f.page) not in gone],
            )
        return await _upsert_records(conn, chunk, found, Written(n_docs, n_fail, tuple(refused)))
