"""The replay cron job: retry transient failures as new jobs, a bounded number of times."""

from __future__ import annotations

import logging
from typing import Any

from jobs.context import WorkerContext
from jobs.cron import cron_task
from worker.scheduling import replay

log = logging.getLogger("harvester.jobs")

# A cron run replays at most this many failure rows; the next run takes the rest.
CRON_LIMIT = 10_000


@cron_task
async def replay_failures(ctx: WorkerContext) -> dict[str, Any]:
    """arq cron entry point: replay transient failures older than HARVESTER_REPLAY_AFTER.

    Only failures of generation < HARVESTER_REPLAY_MAX are taken, so a URL that keeps failing
    is tried at most that many more times. Off (a no-op) when HARVESTER_REPLAY_AFTER is 0.
    """
    settings = ctx["settings"]
    if settings.replay_after <= 0:
        return {"disabled": True}
    result = await replay.replay_failures(
        ctx["pool"],
        ctx["redis"],
        transient_only=True,
        older_than=settings.replay_after,
        max_generation=settings.replay_max - 1,
        reason="cron",
        batch_size=min(settings.max_batch_urls, 1000),
        limit=CRON_LIMIT,
    )
    summary = {"jobs": len(result.jobs), "urls": result.urls, "recovered": result.recovered}
    log.info("replay.done", extra=summary)
    return summary
