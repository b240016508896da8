-- A lease per job (worker/engine/leases.py): each run of a job takes it, raising the epoch, and
-- every transaction that lands the job's rows first checks, with a share lock on the row, that
-- its run still holds it. A run whose job was taken over by another worker (its owner looked
-- dead: SIGSTOP, a stalled host) therefore commits nothing more, and a takeover waits for a
-- landing transaction already past the check to commit or roll back.
--
-- Locks: a new table; nothing else is touched.
CREATE TABLE job_leases (
    job_id   text PRIMARY KEY,
    run      uuid        NOT NULL,             -- the run holding the lease
    epoch    bigint      NOT NULL,             -- runs of this job so far, this one included
    owner    text        NOT NULL,             -- the worker process, <host>:<pid>[:<n>]
    taken_at timestamptz NOT NULL DEFAULT now()
);
