"""Workers behind a real pgbouncer in transaction mode (HARVESTER_PGBOUNCER=true), run as the
Procfile runs them: jobs end to end, and a worker without the setting stopping with a one-line
message. Postgres restarted behind pgbouncer and a backend killed mid-write are cases of
test_postgres.py."""

from __future__ import annotations

from collections.abc import Callable

from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue, outcome_counts, reach
from tests.helpers.pgbouncer import Pgbouncer
from tests.helpers.upstream import Upstream


async def test_jobs_land_through_pgbouncer_once_per_url(
    stack: Stack,
    bouncer: Pgbouncer,
    upstream: Upstream,
    spawn_worker: Callable[..., WorkerProcess],
) -> None:
    """A worker behind pgbouncer (its start-up migration check too) lands every URL of its jobs, by COPY,
    exactly once, with nothing deferred. (Staging on a conflict is tested through pgbouncer in
    tests/integration/test_pgbouncer.py, where a chunk can be written twice on purpose.)"""
    total = 120
    urls = [upstream.url(f"/json/{i}") for i in range(total)]
    worker = spawn_worker(database_url=bouncer.url(stack.database_url), pgbouncer="true", **FAST)
    await worker.start()
    await enqueue(stack, urls, 40, "bounced")
    await reach(stack, total, timeout=60)
    assert (await outcome_counts(stack.database_url)) == (total, total, 0)
    assert worker.running, worker.log()[-3000:]
    assert "job.deferred" not in worker.log()
    assert "pgbouncer" not in worker.log()


async def test_without_the_setting_a_worker_stops_with_one_line(
    stack: Stack, bouncer: Pgbouncer, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """A worker pointed at pgbouncer without HARVESTER_PGBOUNCER exits 2 saying what to set,
    without a traceback."""
    worker = spawn_worker(database_url=bouncer.url(stack.database_url))
    await worker.start()
    assert await worker.wait(timeout=60) == 2, worker.log()[-3000:]
    assert "set HARVESTER_PGBOUNCER=true" in worker.log()
    assert "Traceback" not in worker.log()
