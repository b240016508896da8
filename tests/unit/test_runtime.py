"""The worker's arq wiring, read from settings: cron tasks, their names and schedules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from worker.runtime.app import cron_jobs
from worker.settings import Settings


def test_cron_tasks_follow_configuration(make_settings: Callable[..., Settings]) -> None:
    """Source polling always runs; replay and retention only when configured."""
    q = f"cron:{make_settings().queue}:"
    assert [c.name for c in cron_jobs(make_settings())] == [f"{q}poll_sources"]
    names = [c.name for c in cron_jobs(make_settings(replay_after=600, retention_days=30))]
    assert names == [f"{q}poll_sources", f"{q}replay_failures", f"{q}apply_retention"]


def test_poll_interval_becomes_cron_fields(make_settings: Callable[..., Settings]) -> None:
    """15 s polls run at seconds 0/15/30/45; 5-minute polls at minutes 0, 5, ... second 0."""
    (fast,) = cron_jobs(make_settings(sources_poll_seconds=15))
    assert (fast.minute, fast.second) == (None, {0, 15, 30, 45})
    (slow,) = cron_jobs(make_settings(sources_poll_seconds=300))
    assert (slow.minute, slow.second) == (set(range(0, 60, 5)), {0})


def test_two_deployments_on_one_redis_get_their_own_cron_ticks(
    make_settings: Callable[..., Settings],
) -> None:
    """Job ids are global to a Redis database: cron names (and so tick ids) carry the queue,
    so a second deployment's tick never takes the id of the first's."""
    (a,) = cron_jobs(make_settings(queue="team-a"))
    (b,) = cron_jobs(make_settings(queue="team-b"))
    assert a.name == "cron:team-a:poll_sources"
    assert b.name == "cron:team-b:poll_sources"


def test_a_worker_freezes_what_start_up_made_but_no_garbage() -> None:
    """`harvester worker` puts start-up's objects out of the collector's sight (full
    collections stop walking them), after collecting what start-up left as garbage. In a
    process of its own: freezing the test session's heap would outlive the test."""
    script = (
        "import gc, sys\n"
        "from worker.cli.main import _freeze_start_up\n"
        "class Cycle: pass\n"
        "c = Cycle(); c.me = c; del c\n"
        "_freeze_start_up()\n"
        "frozen = gc.get_freeze_count()\n"
        "gc.unfreeze()\n"
        "left = [o for o in gc.get_objects() if type(o).__name__ == 'Cycle']\n"
        "print(frozen, len(left))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    frozen, cycles = map(int, run.stdout.split())
    assert frozen > 10_000
    assert cycles == 0
