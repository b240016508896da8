-- Registered sources: URLs polled on a schedule by the worker's cron task (see README,
-- "Scheduled sources"). A plain INSERT of (url, interval_s) registers one, due at once.
CREATE TABLE sources (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url                  text        NOT NULL,
    name                 text,                               -- stored as documents.source
    interval_s           integer     NOT NULL DEFAULT 900 CHECK (interval_s > 0),
    enabled              boolean     NOT NULL DEFAULT true,
    next_due_at          timestamptz NOT NULL DEFAULT now(),
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- The poll in flight: a cron run claimed the source and enqueued job poll_job_id. Until
    -- claimed_until no other run claims it again, so a backed-up queue does not pile up polls.
    poll_job_id          text,
    claimed_until        timestamptz,
    -- The state of the last fetch.
    last_polled_at       timestamptz,
    last_status          integer,
    last_outcome         text,         -- changed | unchanged | not_modified | a failure kind
    last_error           text,
    etag                 text,
    last_modified        text,
    content_hash         bytea,
    document_job_id      text,         -- the job whose documents row holds the current content
    consecutive_failures integer     NOT NULL DEFAULT 0,
    last_success_at      timestamptz
);
CREATE UNIQUE INDEX sources_url_key ON sources (harvester_url_key(url));
CREATE INDEX sources_due_idx ON sources (next_due_at) WHERE enabled;
