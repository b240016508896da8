"""Postgres restarted, a backend killed mid-write (with workers reaching Postgres directly, and
through pgbouncer in transaction mode), and Postgres down for a minute."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from tests.helpers import wait_until
from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue, outcome_counts, reach
from tests.helpers.upstream import Upstream


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_mid_batch_loses_and_duplicates_nothing(
    stack: Stack,
    upstream: Upstream,
    spawn_worker: Callable[..., WorkerProcess],
    reach_postgres: dict[str, str],
    mode: str,
) -> None:
    """A restart (fast or immediate shutdown) under running jobs: every URL lands exactly once."""
    total = 300
    await enqueue(
        stack, [upstream.url(f"/slow/{i}?delay=0.1") for i in range(total)], 50, f"pg-{mode}"
    )
    worker = spawn_worker(**reach_postgres, **FAST)
    await worker.start()
    await reach(stack, 40, timeout=30)
    await stack.restart_postgres(mode)
    await reach(stack, total, timeout=90)
    assert worker.running, worker.log()[-3000:]
    assert (await outcome_counts(stack.database_url)) == (total, total, 0)


async def test_backend_killed_mid_write_leaves_no_partial_chunk(
    stack: Stack,
    upstream: Upstream,
    spawn_worker: Callable[..., WorkerProcess],
    reach_postgres: dict[str, str],
) -> None:
    """pg_terminate_backend during the INSERT of a chunk: the chunk is rolled back and retried."""
    admin = await asyncpg.connect(stack.database_url)
    try:
        # Make each chunk's INSERT take long enough to be caught in the act.
        await admin.execute(
            """
            CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql
                AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
            CREATE TRIGGER slow_insert AFTER INSERT ON documents
                FOR EACH STATEMENT EXECUTE FUNCTION slow_down();
            """
        )
        total = 200
        await enqueue(stack, [upstream.url(f"/json/{i}") for i in range(total)], 100, "terminate")
        worker = spawn_worker(**reach_postgres, **{**FAST, "copy_chunk_rows": 50})
        await worker.start()

        killed: list[bool] = []

        async def killed_a_writer() -> bool:
            rows = await admin.fetch(
                """SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity
                   WHERE application_name = 'harvester' AND state = 'active'
                     AND (query LIKE 'COPY "documents"%' OR query LIKE '%INSERT INTO documents%')"""
            )
            killed.extend(r["ok"] for r in rows)
            return any(killed)

        await wait_until(killed_a_writer, timeout=30)
        await reach(stack, total, timeout=60)
    finally:
        await admin.close()
    assert worker.running
    assert (await outcome_counts(stack.database_url)) == (total, total, 0)


async def test_postgres_down_for_a_minute_defers_the_job_and_the_worker_stays_up(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """With Postgres gone for 60 s the job is deferred with backoff, then completes."""
    total = 100
    worker = spawn_worker(**FAST, job_retry_delay=1, job_retry_max_delay=8)
    await worker.start()

    async def started() -> bool:
        return "worker.started" in worker.log()

    await wait_until(started, timeout=30)
    await asyncio.to_thread(stack.pg.stop, "fast")
    try:
        await enqueue(stack, [upstream.url(f"/json/{i}") for i in range(total)], 50, "down")

        async def deferred() -> bool:
            return "job.deferred" in worker.log()

        await wait_until(deferred, timeout=30)
        await asyncio.sleep(60)  # the length of the injected outage
        assert worker.running, worker.log()[-3000:]
    finally:
        await asyncio.to_thread(stack.pg.start)
    await reach(stack, total, timeout=120)
    assert worker.running
    assert (await outcome_counts(stack.database_url)) == (total, total, 0)
    assert worker.log().count("job.deferred") >= 3  # retried with backoff, not failed
    assert " failed," not in worker.log()  # arq's line for a job failed for good
