-- The current copy of each request: one row per request (and page of a walk), pointing at its
-- most recent document, kept current in the transaction that lands the document
-- (worker/engine/writes.py). The body stays in documents only, where it is compressed once:
-- this table holds the reference and its metadata, and the view latest_documents joins the
-- body back by primary key, so `SELECT body FROM latest_documents WHERE url = $1` works.
--
-- The key is the documents key without the job: harvester_request_key(url, method, body_hash)
-- (for a GET without a body, the SHA-256 of the URL) and the page number (0: not a page).
-- "Most recent" is the greatest (fetched_at, document id); fetched_at is the landing
-- transaction's start, so two jobs landing the same URL at once leave the later one's copy.
--
-- No foreign key to documents: its check would lock every referenced documents row. Retention
-- (worker/scheduling/retention.py) never deletes a current document.
--
-- Locks: a new table, filled from documents once (a DISTINCT ON over the whole table, under a
-- SHARE lock that holds writers of documents until this migration commits): see
-- docs/upgrading.md for how long that takes.
CREATE TABLE latest_document_refs (
    url_key      bytea       NOT NULL,  -- harvester_request_key(url, method, body_hash)
    page         integer     NOT NULL,  -- a walk's page number; 0: not a page
    url          text        NOT NULL,
    method       text        NOT NULL,
    document_id  bigint      NOT NULL,  -- documents.id of the current copy
    job_id       text        NOT NULL,
    source       text,
    fetched_at   timestamptz NOT NULL,
    content_hash bytea,                 -- BLAKE2b-128 of the body as served; NULL: backfilled
    PRIMARY KEY (url_key, page)
) WITH (fillfactor = 50);  -- half of each page free: a refresh is a HOT update (no index)
CREATE INDEX latest_document_refs_url_idx ON latest_document_refs USING hash (url);

LOCK TABLE documents IN SHARE MODE;
INSERT INTO latest_document_refs
    (url_key, page, url, method, document_id, job_id, source, fetched_at, content_hash)
SELECT DISTINCT ON (harvester_request_key(url, method, body_hash), COALESCE(page, 0))
       harvester_request_key(url, method, body_hash), COALESCE(page, 0), url, method, id, job_id,
       source, fetched_at, NULL
FROM documents
ORDER BY harvester_request_key(url, method, body_hash), COALESCE(page, 0), fetched_at DESC,
         id DESC;

CREATE VIEW latest_documents AS
SELECT l.url, l.method, d.request, NULLIF(l.page, 0) AS page, d.page_url, l.job_id, l.source,
       d.status, d.body, l.fetched_at, l.content_hash, l.document_id
FROM latest_document_refs l
JOIN documents d ON d.id = l.document_id;
