-- Indexes on age: retention (worker/scheduling/retention.py) now also deletes record failures
-- and finished webhook deliveries older than HARVESTER_RETENTION_DAYS, and the dashboard and
-- `harvester status` read the last hour of failures (fetch_failures had no index on failed_at
-- alone: each read was a scan of the table).
--
-- Locks: CREATE INDEX holds a SHARE lock on its table while it builds: writes to it wait
-- (landing chunks that hold failures or record failures). On a large fetch_failures, build the
-- index first without blocking, then migrate (IF NOT EXISTS finds it):
--     CREATE INDEX CONCURRENTLY fetch_failures_failed_at_idx ON fetch_failures (failed_at);
-- record_failures and webhook_outbox are recent tables (012, 013).
CREATE INDEX IF NOT EXISTS fetch_failures_failed_at_idx ON fetch_failures (failed_at);
CREATE INDEX IF NOT EXISTS record_failures_created_idx ON record_failures (created_at);
CREATE INDEX IF NOT EXISTS webhook_outbox_finished_idx ON webhook_outbox (created_at)
    WHERE state <> 'pending';
