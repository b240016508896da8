"""SQL migrations, applied in order by `harvester migrate`; installed as `worker.sql`."""
