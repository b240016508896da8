"""In-process workers that keep running (and beating) until the test is done with them, unlike
the `make_worker` fixture's burst workers, which stop polling once the queue is empty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.worker import Worker

from worker.runtime.app import create_worker
from worker.settings import Settings


def long_running(settings: Settings) -> Worker:
    """A worker with harvester's real start-up and shutdown that polls until closed; cron off."""
    return create_worker(settings, poll_delay=0.05, handle_signals=False, cron_jobs=[])


@asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[None]:
    """Run ``workers`` in the background; close them (a clean shutdown) on the way out."""
    tasks = [asyncio.create_task(w.async_run()) for w in workers]
    try:
        yield
    finally:
        for w in workers:
            await w.close()
        await asyncio.gather(*tasks, return_exceptions=True)
