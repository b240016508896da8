-- Retention (worker/scheduling/retention.py) also deletes record failures and finished webhook
-- deliveries older than HARVESTER_RETENTION_DAYS; these indexes find them by age.
--
-- Locks: CREATE INDEX takes a SHARE lock on each table while it builds; both tables are recent
-- (012, 013) and small next to documents, so the build is short. Nothing else is touched.
CREATE INDEX record_failures_created_idx ON record_failures (created_at);
CREATE INDEX webhook_outbox_finished_idx ON webhook_outbox (created_at) WHERE state <> 'pending';
