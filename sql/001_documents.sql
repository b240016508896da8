-- One row per successfully fetched URL per job. `url` is the URL exactly as enqueued.
-- Uniqueness on (job_id, url) is enforced through md5(url): a btree entry cannot hold a URL
-- longer than about 2,700 bytes, and URLs of any length must land.
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
CREATE UNIQUE INDEX documents_job_url_key ON documents (job_id, md5(url));
CREATE INDEX documents_url_idx ON documents USING hash (url);
CREATE INDEX documents_source_fetched_at_idx ON documents (source, fetched_at);
CREATE INDEX documents_fetched_at_idx ON documents (fetched_at);
