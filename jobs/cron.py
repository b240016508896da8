"""What the cron tasks share: their names, who may run them, and a tick that finds Postgres
down is skipped, not failed."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, cast

from jobs.context import JobContext, WorkerContext
from worker.errors import BadJobError, StoreError
from worker.logs import bound_job

log = logging.getLogger("harvester.jobs")

CronTask = Callable[[WorkerContext], Awaitable[dict[str, Any]]]

CRON_PREFIX = "cron:"


def cron_name(queue: str, task: str) -> str:
    """The arq name of a cron task on ``queue``; its tick job ids are ``<name>:<tick ms>``."""
    return f"{CRON_PREFIX}{queue}:{task}"


def cron_task(task: CronTask) -> CronTask:
    """Wrap a cron task: it runs only as one of its own ticks (a job enqueued by hand under its
    name is refused), binds its job id to the log, and turns a `StoreError` into one warning:
    the next tick does the work, and a Postgres outage does not fill the log with a failed job
    and its traceback every minute."""

    @functools.wraps(task)
    async def wrapper(ctx: WorkerContext) -> dict[str, Any]:
        jctx = cast(JobContext, ctx)
        job_id = jctx["job_id"]
        name = cron_name(jctx["settings"].queue, task.__name__)
        if not re.fullmatch(re.escape(name) + r":\d+", job_id):
            raise BadJobError(f"{task.__name__} runs only on its schedule, not as job {job_id!r}")
        with bound_job(job_id):
            log.info("job.started", extra={"task": task.__name__})
            try:
                return await task(ctx)
            except StoreError as exc:
                log.warning("cron.skipped", extra={"task": task.__name__, "reason": str(exc)})
                return {"skipped": str(exc)}

    return wrapper
