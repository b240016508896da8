"""arq wiring: WorkerSettings, and the start-up and shutdown of the process's resources.

Run with ``harvester worker`` or ``arq worker.app.WorkerSettings``. The settings class is built
on first access from the environment, so importing this module never reads it.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any, cast

from arq.worker import func

from jobs.fetch_batch import fetch_batch
from worker import store
from worker.client import JOB_NAME, redis_settings
from worker.context import WorkerContext
from worker.fetch import Fetcher, create_session
from worker.serialization import deserialize, serialize
from worker.settings import Settings, get_settings

log = logging.getLogger("harvester.worker")

HEALTH_CHECK_INTERVAL_S = 30


async def startup(ctx: dict[str, Any]) -> None:
    """Create the one session and the one pool this process uses, on one exit stack."""
    settings: Settings = ctx.get("settings") or get_settings()
    stack = AsyncExitStack()
    try:
        session = create_session(settings)
        stack.push_async_callback(session.close)
        pool = await store.create_pool(settings)
        stack.push_async_callback(store.close_pool, pool)
    except BaseException:
        await stack.aclose()
        raise
    ctx.update(settings=settings, fetcher=Fetcher(session, settings), pool=pool, exit_stack=stack)
    log.info(
        "worker.started",
        extra={
            "queue": settings.queue,
            "concurrency": settings.concurrency,
            "per_host": settings.per_host,
            "max_jobs": settings.max_jobs,
        },
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what startup opened (a no-op if startup failed before finishing)."""
    wctx = cast(WorkerContext, ctx)
    stack = wctx.get("exit_stack")
    if stack is not None:
        await stack.aclose()
    log.info("worker.stopped")


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker`, from our settings."""
    return {
        "functions": [
            func(
                fetch_batch,  # type: ignore[arg-type]  # arq types ctx as dict[Any, Any]
                name=JOB_NAME,
                timeout=settings.job_timeout,
                max_tries=settings.job_tries,
            )
        ],
        "queue_name": settings.queue,
        "redis_settings": redis_settings(settings),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": serialize,
        "job_deserializer": deserialize,
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.poll_delay,
        "keep_result": settings.keep_result,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
        "ctx": {"settings": settings},
    }


def __getattr__(name: str) -> Any:
    # `arq worker.app.WorkerSettings` looks the class up here; build it from the environment.
    if name == "WorkerSettings":
        return type("WorkerSettings", (), worker_settings(get_settings()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
