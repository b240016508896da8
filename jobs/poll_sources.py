"""The `poll_sources` cron task: enqueue the registered sources that are due."""

from __future__ import annotations

import logging
from typing import Any

from jobs.context import WorkerContext
from jobs.cron import cron_task
from worker.scheduling import polls

log = logging.getLogger("harvester.jobs")


@cron_task
async def poll_sources(ctx: WorkerContext) -> dict[str, Any]:
    """Claim due sources and enqueue them as scheduled `fetch_batch` jobs."""
    done = await polls.enqueue_due(ctx["pool"], ctx["redis"], ctx["settings"])
    if done.sources:
        log.info("sources.enqueued", extra={"sources": done.sources, "jobs": len(done.jobs)})
    return {"sources": done.sources, "jobs": list(done.jobs)}
