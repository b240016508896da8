-- Records (a job's or source's `records`: worker/engine/records.py): each element a JSONPath
-- finds in a document's body, upserted by (source, key) in the transaction that lands the
-- document. A record's row changes only when its content hash does: `document` (job_id, url,
-- page) names the document its current body came from, `changed_at` when it did. When it was
-- last seen lives in the narrow record_seen table, so an unchanged record costs a small HOT
-- update there and no new version of its (possibly large) records row.
--
-- Locks: new tables, and a column without a default on sources (a catalog change: its
-- ACCESS EXCLUSIVE lock lasts a moment).
CREATE TABLE records (
    source     text        NOT NULL,
    key        text        NOT NULL,
    body       jsonb       NOT NULL,
    hash       bytea       NOT NULL,             -- BLAKE2b-128 of the record's canonical JSON
    first_seen timestamptz NOT NULL DEFAULT now(),
    changed_at timestamptz NOT NULL DEFAULT now(),
    job_id     text        NOT NULL,             -- the document: documents (job_id, url, page)
    url        text        NOT NULL,
    page       integer,
    PRIMARY KEY (source, key)
);

-- Moved by every sighting; no index on last_seen, and room on each page, so updates stay HOT.
CREATE TABLE record_seen (
    source    text        NOT NULL,
    key       text        NOT NULL,
    last_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, key)
) WITH (fillfactor = 50);

-- A document whose records could not be read: its path found nothing, an element had no key,
-- or its body could not be parsed. The document itself landed (it is the URL's one outcome, in
-- documents); this says what its records lack. One row per document.
CREATE TABLE record_failures (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     text        NOT NULL,
    url        text        NOT NULL,
    page       integer,
    source     text        NOT NULL,
    kind       text        NOT NULL,             -- records_no_path | records_no_key | records_unreadable
    detail     text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX record_failures_document_key
    ON record_failures (job_id, harvester_url_key(url), COALESCE(page, 0));
CREATE INDEX record_failures_source_idx ON record_failures (source, created_at);

-- A scheduled source's records (a job's records object); NULL: none. Its polls carry it.
ALTER TABLE sources ADD COLUMN records jsonb;
