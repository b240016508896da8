"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from jobs.cron import cron_name
from worker.settings import Settings


def worker_env(database_url: str, redis_url: str, queue: str, **settings: object) -> dict[str, str]:
    """The environment for a harvester subprocess: this one minus any harvester settings, plus
    the given services, loopback opened, backoff off, and ``settings`` as HARVESTER_* values."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("HARVESTER_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        HARVESTER_QUEUE=queue,
        HARVESTER_ALLOWED_NETWORKS="127.0.0.0/8",
        HARVESTER_RETRY_BASE_DELAY="0",
    )
    env.update({f"HARVESTER_{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait for an observable condition (not a fixed time); fail the test if it never holds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def cron_ctx(task: str, settings: Settings, **resources: object) -> dict[str, object]:
    """The ctx arq gives a cron task on one of its ticks, with ``resources`` (pool, redis)."""
    return {"settings": settings, "job_id": f"{cron_name(settings.queue, task)}:1", **resources}
