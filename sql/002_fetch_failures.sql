-- One row per URL of a job that could not be landed, with a short stable kind in `error`.
CREATE TABLE fetch_failures (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     text        NOT NULL,
    url        text        NOT NULL,
    source     text,
    error      text        NOT NULL,
    status     integer,
    attempts   integer     NOT NULL,
    detail     text        NOT NULL DEFAULT '',
    failed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX fetch_failures_job_url_key ON fetch_failures (job_id, harvester_url_key(url));
CREATE INDEX fetch_failures_url_idx ON fetch_failures USING hash (url);
CREATE INDEX fetch_failures_error_failed_at_idx ON fetch_failures (error, failed_at);
