-- The key that makes (job_id, url) unique. A btree entry cannot hold a URL longer than about
-- 2,700 bytes, and URLs of any length must land, so uniqueness is on a SHA-256 of the URL.
-- IMMUTABLE is true here: the database encoding (UTF-8) never changes under a database.
CREATE FUNCTION harvester_url_key(url text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT sha256(convert_to(url, 'UTF8')) $$;

-- One row per successfully fetched URL per job. `url` is the URL exactly as enqueued.
CREATE TABLE documents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      text        NOT NULL,
    url         text        NOT NULL,
    source      text,
    status      integer     NOT NULL,
    body        jsonb       NOT NULL,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    elapsed_ms  integer     NOT NULL,
    attempts    integer     NOT NULL
);
CREATE UNIQUE INDEX documents_job_url_key ON documents (job_id, harvester_url_key(url));
CREATE INDEX documents_url_idx ON documents USING hash (url);
CREATE INDEX documents_source_fetched_at_idx ON documents (source, fetched_at);
CREATE INDEX documents_fetched_at_idx ON documents (fetched_at);
