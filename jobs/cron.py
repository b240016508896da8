"""What the cron tasks share: a tick that finds Postgres down is skipped, not failed."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from worker.context import WorkerContext
from worker.errors import StoreError

log = logging.getLogger("harvester.jobs")

CronTask = Callable[[WorkerContext], Awaitable[dict[str, Any]]]


def skip_when_store_down(task: CronTask) -> CronTask:
    """Turn a `StoreError` into one warning: the next tick does the work, and a Postgres outage
    does not fill the log with a failed job and its traceback every minute."""

    @functools.wraps(task)
    async def wrapper(ctx: WorkerContext) -> dict[str, Any]:
        try:
            return await task(ctx)
        except StoreError as exc:
            log.warning("cron.skipped", extra={"task": task.__name__, "reason": str(exc)})
            return {"skipped": str(exc)}

    return wrapper
