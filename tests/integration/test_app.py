"""arq wiring: cron tasks and the job lock they must not lengthen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from arq.connections import ArqRedis

from jobs.poll_sources import poll_sources
from tests.helpers import cron_ctx, wait_until
from tests.helpers.workers import long_running, running
from worker.engine import store
from worker.queue import heartbeat
from worker.runtime.app import create_worker
from worker.settings import Settings


async def test_cron_tasks_do_not_lengthen_the_job_lock(
    make_settings: Callable[..., Settings],
) -> None:
    """arq locks jobs for the longest function timeout + 10 s; with every cron task on, that is
    still the job timeout, so a killed worker's jobs re-run as soon as before."""
    settings = make_settings(job_timeout=90, replay_after=600, retention_days=30)
    worker = create_worker(settings, burst=True, handle_signals=False)
    try:
        assert worker.in_progress_timeout_s == 100
    finally:
        await worker.close()


async def test_a_cron_tick_without_postgres_is_skipped_not_failed(
    settings: Settings, arq_queue: ArqRedis
) -> None:
    """poll_sources on a Postgres that is gone logs and returns; it does not raise."""
    pool = await store.create_pool(settings)
    await store.close_pool(pool)  # a pool that cannot hand out connections any more
    ctx = cron_ctx("poll_sources", settings, pool=pool, redis=arq_queue)
    result = await poll_sources(ctx)  # type: ignore[arg-type]
    assert "cannot claim due sources" in result["skipped"]


async def test_a_job_task_that_ended_cancelled_does_not_cut_the_close_short(
    settings: Settings, arq_queue: ArqRedis
) -> None:
    """arq's close waits for the job tasks and would raise a cancelled one's CancelledError
    (a job cancelled at shutdown between two awaits), skipping the rest of its close: the
    heartbeat would stay, on_shutdown would not run and the Redis pool would stay open."""
    worker = long_running(settings)
    async with running(worker):
        await wait_until(lambda: arq_queue.exists(worker.health_check_key), timeout=20)
        cancelled = asyncio.create_task(asyncio.sleep(3600))
        cancelled.cancel()
        worker.tasks["cancelled-job"] = cancelled
    assert cancelled.cancelled()
    assert not await arq_queue.exists(worker.health_check_key)
    assert worker.ctx["pool"].is_closing()  # on_shutdown ran


async def test_a_worker_closed_before_its_run_began_does_not_run(
    settings: Settings, arq_queue: ArqRedis
) -> None:
    """A close that comes before the run's task first ran (a test whose body fails at once)
    finds no main task to cancel: the run must then end without starting, not poll for ever."""
    worker = long_running(settings)
    run = asyncio.create_task(worker.async_run())
    try:
        await worker.close()  # nothing here awaits before the close: the run has not begun
        await asyncio.wait_for(asyncio.shield(run), timeout=10)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    assert worker.main_task is not None
    assert worker.main_task.done()
    assert not worker.main_task.cancelled()  # it ended by itself
    assert "exit_stack" not in worker.ctx  # harvester's start-up never ran
    assert not await arq_queue.exists(worker.health_check_key)


async def test_a_worker_closed_while_it_first_registers_leaves_no_entry(
    settings: Settings, arq_queue: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close (a SIGTERM at start-up) while the first registry write waits for its reply: the
    entry is written, so the close must take it out, or status would list a dead worker."""
    written = asyncio.Event()
    register = heartbeat.register

    async def register_then_stall(*args: Any, **kwargs: Any) -> None:
        await register(*args, **kwargs)
        written.set()
        await asyncio.sleep(3600)  # the reply that has not come when the close does

    monkeypatch.setattr(heartbeat, "register", register_then_stall)
    worker = long_running(settings)
    async with running(worker):
        await asyncio.wait_for(written.wait(), timeout=20)
    assert await heartbeat.read_workers(arq_queue, settings.queue) == []
