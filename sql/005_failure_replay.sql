-- Replays of failed URLs as new jobs. A replayed failure row points at the job that retried it;
-- `replays` says how deep a replay is, so the replay cron can stop after a bounded number.
ALTER TABLE fetch_failures
    ADD COLUMN replayed_by text,
    ADD COLUMN replayed_at timestamptz;
CREATE INDEX fetch_failures_unreplayed_idx ON fetch_failures (failed_at) WHERE replayed_by IS NULL;
CREATE INDEX fetch_failures_replayed_by_idx ON fetch_failures (replayed_by)
    WHERE replayed_by IS NOT NULL;

CREATE TABLE replays (
    job_id      text        PRIMARY KEY,            -- the new job
    generation  integer     NOT NULL,               -- 1 replays first failures, 2 a replay's...
    urls        integer     NOT NULL,
    source      text,
    reason      text        NOT NULL,               -- cli | cron
    created_at  timestamptz NOT NULL DEFAULT now(),
    enqueued_at timestamptz                         -- NULL until Redis has taken the job
);
