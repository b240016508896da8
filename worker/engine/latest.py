"""The current copy of each request: `latest_document_refs` kept current by the transaction that
lands its documents (sql/011_latest_documents.sql).

One statement per chunk: the chunk's requests, joined to the documents rows they have in this
job (whether this transaction added them or an earlier run did), are upserted by request key and
page, and a row moves only to a copy with a greater (fetched_at, document id). Rows are upserted
in key order, so two chunks of different jobs landing overlapping URLs at once take their row
locks in the same order and wait for each other instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.engine.outcomes import Fetched
from worker.engine.polling import content_hash
from worker.engine.store import Conn

# DISTINCT ON: a chunk that staged may hold a request twice (a retried write), and one upsert
# cannot touch a row twice. The body is never read: the join fetches documents' small columns.
_KEEP_CURRENT = """
INSERT INTO latest_document_refs AS l
    (url_key, page, url, method, document_id, job_id, source, fetched_at, content_hash)
SELECT DISTINCT ON (k.url_key, k.page)
       k.url_key, k.page, d.url, d.method, d.id, d.job_id, d.source, d.fetched_at, v.content_hash
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::integer[], $6::bytea[])
    AS v(url, method, body_hash, page, content_hash)
CROSS JOIN LATERAL (
    SELECT harvester_request_key(v.url, v.method, v.body_hash) AS url_key,
           COALESCE(v.page, 0) AS page
) AS k
-- A probe of documents' unique key per request (LIMIT 1 keeps the subquery a nested loop: a
-- join would let the planner hash every document of the job, once per chunk).
JOIN LATERAL (
    SELECT d.id, d.url, d.method, d.job_id, d.source, d.fetched_at FROM documents d
    WHERE d.job_id = $1
      AND harvester_request_key(d.url, d.method, d.body_hash) = k.url_key
      AND COALESCE(d.page, 0) = k.page
    LIMIT 1
) AS d ON true
ORDER BY k.url_key, k.page
ON CONFLICT (url_key, page) DO UPDATE SET
    url = EXCLUDED.url,
    document_id = EXCLUDED.document_id,
    job_id = EXCLUDED.job_id,
    source = EXCLUDED.source,
    fetched_at = EXCLUDED.fetched_at,
    content_hash = EXCLUDED.content_hash
WHERE (l.fetched_at, l.document_id) < (EXCLUDED.fetched_at, EXCLUDED.document_id)
"""


@dataclass(frozen=True, slots=True)
class Current:
    """A chunk's documents as `keep_current` sends them, built (bodies hashed) before the
    landing transaction starts, and once for every way that chunk may be tried."""

    urls: list[str]
    methods: list[str]
    body_hashes: list[bytes | None]
    pages: list[int | None]
    content_hashes: list[bytes]

    @classmethod
    def of(cls, docs: Sequence[Fetched]) -> Current:
        requests = [d.request for d in docs]
        return cls(
            [d.url for d in docs],
            ["GET" if r is None else r.method for r in requests],
            [None if r is None else r.body_hash for r in requests],
            [d.page for d in docs],
            [content_hash(d.body) for d in docs],
        )


async def keep_current(conn: Conn, job_id: str, current: Current) -> None:
    """Point each request of ``current`` at its document in ``job_id`` if that is its newest
    copy. Run in the transaction that lands the documents, after them; documents Postgres
    refused (not in the table) are skipped by the join."""
    if not current.urls:
        return
    c = current
    await conn.execute(
        _KEEP_CURRENT, job_id, c.urls, c.methods, c.body_hashes, c.pages, c.content_hashes
    )
