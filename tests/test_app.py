"""arq wiring: cron tasks and the job lock they must not lengthen."""

from __future__ import annotations

from collections.abc import Callable

from arq.connections import ArqRedis

from jobs.poll_sources import poll_sources
from tests.helpers import cron_ctx
from worker.engine import store
from worker.runtime.app import create_worker, cron_jobs
from worker.settings import Settings


def test_cron_tasks_follow_configuration(make_settings: Callable[..., Settings]) -> None:
    """Source polling always runs; replay and retention only when configured."""
    q = "cron:harvester:test:"
    assert [c.name for c in cron_jobs(make_settings())] == [f"{q}poll_sources"]
    names = [c.name for c in cron_jobs(make_settings(replay_after=600, retention_days=30))]
    assert names == [f"{q}poll_sources", f"{q}replay_failures", f"{q}apply_retention"]


def test_poll_interval_becomes_cron_fields(make_settings: Callable[..., Settings]) -> None:
    """15 s polls run at seconds 0/15/30/45; 5-minute polls at minutes 0, 5, ... second 0."""
    (fast,) = cron_jobs(make_settings(sources_poll_seconds=15))
    assert (fast.minute, fast.second) == (None, {0, 15, 30, 45})
    (slow,) = cron_jobs(make_settings(sources_poll_seconds=300))
    assert (slow.minute, slow.second) == (set(range(0, 60, 5)), {0})


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


def test_two_deployments_on_one_redis_get_their_own_cron_ticks(
    make_settings: Callable[..., Settings],
) -> None:
    """Job ids are global to a Redis database: cron names (and so tick ids) carry the queue,
    so a second deployment's tick never takes the id of the first's."""
    (a,) = cron_jobs(make_settings(queue="team-a"))
    (b,) = cron_jobs(make_settings(queue="team-b"))
    assert a.name == "cron:team-a:poll_sources"
    assert b.name == "cron:team-b:poll_sources"
