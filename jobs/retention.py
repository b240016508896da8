"""The retention cron job: delete rows older than HARVESTER_RETENTION_DAYS."""

from __future__ import annotations

import logging
from typing import Any

from jobs.context import WorkerContext
from jobs.cron import cron_task
from worker.scheduling import retention

log = logging.getLogger("harvester.jobs")


@cron_task
async def apply_retention(ctx: WorkerContext) -> dict[str, Any]:
    """arq cron entry point: delete expired documents, failures, record failures and finished
    webhook deliveries in small batches.

    Off (a no-op) when HARVESTER_RETENTION_DAYS is unset.
    """
    settings = ctx["settings"]
    if settings.retention_days is None:
        return {"disabled": True}
    result = await retention.delete_expired(
        ctx["pool"], days=settings.retention_days, batch_rows=settings.retention_batch_rows
    )
    summary = result.as_dict()
    log.info("retention.done", extra=summary)
    return summary
