"""`harvester status`, checked on real workers' data."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.constants import result_key_prefix
from arq.worker import Worker

from tests.helpers import Services, wait_until
from tests.helpers.cli import InProcess, cli_env
from tests.helpers.upstream import Upstream
from tests.helpers.workers import long_running, running
from worker.ops.queuehistory import QueueHistory, sampling
from worker.ops.status import gather
from worker.ops.trends import JobTotals, history, progress
from worker.queue import rejections
from worker.queue.client import enqueue_urls
from worker.settings import Settings


async def test_status_reports_a_workers_jobs_failures_and_queue(
    cli: InProcess,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    settings: Settings,
    make_worker: Callable[..., Worker],
    upstream: Upstream,
    services: Services,
) -> None:
    """After a worker ran two jobs: their summaries, the failure kinds, the URLs landed this
    minute and the worker's row (this host and process, alive) show; a job enqueued
    afterwards shows as queued."""
    urls = [upstream.url(f"/json/s{i}") for i in range(8)] + [upstream.url("/status/404")]
    await enqueue_urls(arq_queue, urls, batch_size=5, job_id_prefix="st")
    # One beat for the whole test: a later beat would rewrite the heartbeat with queued=0.
    worker = make_worker(health_check_interval=3600)
    await worker.main()  # burst: runs both jobs, keeps its heartbeat until closed
    await enqueue_urls(arq_queue, [upstream.url("/json/later")], job_id_prefix="later")

    status = await gather(settings, arq_queue, pool)
    assert (status.queued, status.ready, status.deferred) == (1, 1, 0)
    assert status.oldest_ready_age_s is not None
    assert status.oldest_ready_age_s >= 0
    assert status.in_progress == []
    assert status.failures_last_hour == {"http_status": 1}
    assert sum(n for _, n in status.urls_per_minute) == 9
    [row] = status.workers
    assert (row.host, row.pid, row.alive) == (socket.gethostname(), os.getpid(), True)
    assert row.heartbeat is not None
    assert "queued=2" in row.heartbeat  # its first beat saw both jobs
    jobs = {j.job_id: j for j in status.recent_jobs}
    assert set(jobs) == {"st-0", "st-1"}
    assert (jobs["st-0"].success, jobs["st-0"].state) == (True, "ok")
    assert jobs["st-0"].summary is not None
    assert jobs["st-0"].summary["documents"] == 5
    assert jobs["st-1"].summary["failures"] == {"http_status": 1}

    env = cli_env(services)
    as_json = await cli("status", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["queued"] == 1
    assert {j["job_id"] for j in data["recent_jobs"]} == {"st-0", "st-1"}
    screen = await cli("status", env={**env, "COLUMNS": "160"})
    assert screen.returncode == 0, screen.stderr
    for text in ("queued 1 (ready 1, deferred 0)", "recent jobs", "st-0", "http_status"):
        assert text in screen.stdout, screen.stdout
    assert "workers: 1 alive" in screen.stdout, screen.stdout


async def test_a_refused_job_is_among_the_recent_jobs_with_its_reason(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    redis: aioredis.Redis,
    settings: Settings,
    make_worker: Callable[..., Worker],
    upstream: Upstream,
) -> None:
    """A job the worker refuses lands no row in Postgres, where status finds recent jobs: it
    is listed all the same, failed, with the payload model's reason, beside a job that ran;
    the list of refused ids keeps the newest `rejections.KEEP`."""
    await arq_queue.enqueue_job(
        "fetch_batch", urls=[upstream.url("/json/r")], auth="nope", _job_id="refused-1"
    )
    await enqueue_urls(arq_queue, [upstream.url("/json/ok")], job_id_prefix="ran")
    await make_worker().main()

    status = await gather(settings, arq_queue, pool)
    jobs = {j.job_id: j for j in status.recent_jobs}
    assert set(jobs) == {"refused-1", "ran-0"}
    refused = jobs["refused-1"]
    assert (refused.success, refused.state) == (False, "failed")
    assert refused.summary is not None
    assert "BadJobError" in refused.summary["result"]
    assert "nope" in refused.summary["result"]

    for n in range(rejections.KEEP + 5):
        await rejections.record(redis, settings.queue, f"old-{n}", now=1_000.0 + n)
    kept = await redis.zrange(rejections.rejected_key(settings.queue), 0, -1)
    assert len(kept) == rejections.KEEP
    assert b"refused-1" in kept  # the newest stay; the oldest of the burst went
    assert b"old-0" not in kept


async def test_status_shows_one_row_per_worker_process(
    cli: InProcess,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    settings: Settings,
    make_worker: Callable[..., Worker],
    upstream: Upstream,
    services: Services,
) -> None:
    """Two workers on one host are two rows, each alive with an id of its own, not one row
    with the newest worker's counters."""
    urls = [upstream.url(f"/json/two{i}") for i in range(8)]
    await enqueue_urls(arq_queue, urls, batch_size=2, job_id_prefix="two")
    first, second = make_worker(), make_worker()
    await asyncio.gather(first.main(), second.main())

    status = await gather(settings, arq_queue, pool)
    assert len(status.workers) == 2, status.workers
    assert all(w.alive for w in status.workers)
    assert len({w.id for w in status.workers}) == 2
    assert {(w.host, w.pid) for w in status.workers} == {(socket.gethostname(), os.getpid())}

    result = await cli("status", "--json", env=cli_env(services))
    assert result.returncode == 0, result.stderr
    assert [w["alive"] for w in json.loads(result.stdout)["workers"]] == [True, True]
    screen = await cli("status", env={**cli_env(services), "COLUMNS": "80"})
    assert "workers: 2 alive" in screen.stdout, screen.stdout


async def test_urls_per_second_covers_the_time_the_rows_landed_in(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings
) -> None:
    """30 rows that all landed 10 s ago are about 3 URLs/s over about 10 s, not 30 over a
    whole minute (0.5 URLs/s)."""
    await pool.execute(
        "INSERT INTO documents (job_id, url, status, body, fetched_at, elapsed_ms, attempts) "
        "SELECT 'burst', 'http://x/' || n, 200, '{}', now() - interval '10 seconds', 1, 1 "
        "FROM generate_series(1, 30) n"
    )
    status = await gather(settings, arq_queue, pool)
    # 30 rows over the 10 s since they landed, plus however long this test took to get here.
    assert 1.0 < status.urls_per_second <= 3.0, status
    assert 10.0 <= status.rate_window_s < 30.0, status


async def test_a_job_that_finishes_while_status_reads_is_not_also_in_progress(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    redis: aioredis.Redis,
    settings: Settings,
    make_worker: Callable[..., Worker],
    upstream: Upstream,
) -> None:
    """A job that finishes while `status` waits on Postgres is shown finished, and not in
    progress too (a job with a stored result is not in progress)."""
    await enqueue_urls(arq_queue, [upstream.url("/gate/race")], job_id_prefix="race")
    worker = make_worker()
    run = asyncio.create_task(worker.main())
    blocker = await asyncpg.connect(settings.database_url)
    try:
        await wait_until(lambda: _true(bool(upstream.hits_for("/gate/race"))), timeout=30)
        # Hold status's Postgres read until the job has finished.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE fetch_failures IN ACCESS EXCLUSIVE MODE")
        reading = asyncio.create_task(gather(settings, arq_queue, pool))
        await wait_until(lambda: _lock_waiters(blocker), timeout=30)
        upstream.gate.set()
        await wait_until(lambda: _exists(redis, result_key_prefix + "race-0"), timeout=30)
        await tx.rollback()
        status = await asyncio.wait_for(reading, 30)
    finally:
        upstream.gate.set()
        await blocker.close()
        await asyncio.wait_for(run, 30)
    assert status.in_progress == []
    [job] = status.recent_jobs
    assert (job.job_id, job.success) == ("race-0", True)
    assert job.state == "ok"


async def _true(value: bool) -> bool:
    return value


async def _lock_waiters(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    return bool(waiting)


async def _exists(redis: aioredis.Redis, key: str) -> bool:
    return bool(await redis.exists(key))


async def test_long_job_ids_are_shortened_and_wide_shows_them_whole(
    cli: InProcess,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
    upstream: Upstream,
    services: Services,
) -> None:
    """At 80 columns a long job id is its first 12 characters and an ellipsis; --wide (on a
    screen wide enough) and --json show it whole."""
    prefix = "catalog-import-2026-01-01-nightly"
    await enqueue_urls(arq_queue, [upstream.url("/json/long")], job_id_prefix=prefix)
    await make_worker().main()
    env = {**cli_env(services), "COLUMNS": "80"}
    narrow = await cli("status", env=env)
    assert narrow.returncode == 0, narrow.stderr
    assert f"{prefix}-0" not in narrow.stdout
    assert f"{prefix[:12]}…" in narrow.stdout, narrow.stdout
    wide = await cli("status", "--wide", env={**env, "COLUMNS": "200"})
    assert f"{prefix}-0" in wide.stdout, wide.stdout
    as_json = await cli("status", "--json", env=env)
    assert json.loads(as_json.stdout)["recent_jobs"][0]["job_id"] == f"{prefix}-0"


async def test_an_interval_under_half_a_second_is_refused(
    cli: InProcess, services: Services
) -> None:
    """`status --interval 0.1` is a usage error (exit 2) that says the least allowed."""
    for bad in ("0.1", "0", "-1", "nan", "soon"):
        result = await cli("status", "--interval", bad, env=cli_env(services))
        assert result.returncode == 2, (bad, result.stderr)
        assert "argument --interval" in result.stderr, result.stderr
    assert "at least 0.5" in result.stderr or "'soon'" in result.stderr


async def test_watch_prints_a_plain_snapshot_per_interval_when_not_a_terminal(
    services: Services, redis: object
) -> None:
    """--watch with standard output on a pipe prints one plain screen per interval (no
    terminal escapes), until SIGINT, then exits 0."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "status", "--watch", "--interval", "0.5",
        env=cli_env(services), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(30):
            while seen.count(b"harvester queue") < 2:
                seen += await proc.stdout.read(4096)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
    assert b"workers: 0 alive" in seen
    assert b"\x1b" not in seen


async def test_status_watch_refreshes_until_interrupted(services: Services, redis: object) -> None:
    """--watch on a terminal redraws the screen every --interval until SIGINT, then exits 0."""
    env = {**cli_env(services), "TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "status", "--watch", "--interval", "0.5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(30):
            while seen.count(b"queued ") < 3:  # the first screen and two refreshes
                seen += await proc.stdout.read(4096)
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 10)
    assert code == 0
    assert b"workers: 0 alive" in seen


async def test_a_running_job_is_not_counted_as_queued(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings, upstream: Upstream
) -> None:
    """arq keeps a running job in the queue's set until it ends: status counts it in progress,
    not queued, ready or waiting (so a long job never looks like a stuck queue)."""
    await enqueue_urls(arq_queue, [upstream.url("/gate/long")], job_id_prefix="long")
    async with running(long_running(settings)):

        async def fetching() -> bool:
            return upstream.in_flight == 1

        await wait_until(fetching, timeout=20)
        status = await gather(settings, arq_queue, pool)
        upstream.gate.set()
    assert status.in_progress == ["long-0"]
    assert (status.queued, status.ready, status.deferred) == (0, 0, 0)
    assert status.oldest_ready_age_s is None


async def test_history_counts_each_minute_by_outcome_and_kind(pool: asyncpg.Pool) -> None:
    """history() has one slot per minute, oldest first, ending with this one; rows land in the
    slot of their minute, documents apart from failures and failures by kind; older rows and
    quiet minutes count zero."""
    axis = (await history(pool, minutes=10)).minutes
    now, earlier = axis[-1], axis[-3]  # rows are put in these minutes, whenever read back
    await pool.execute(
        """INSERT INTO documents (job_id, url, status, body, elapsed_ms, attempts, fetched_at) VALUES
           ('h', 'http://x/1', 200, '{}', 1, 1, to_timestamp($1 + 1)),
           ('h', 'http://x/2', 200, '{}', 1, 1, to_timestamp($1 + 59)),
           ('h', 'http://x/3', 200, '{}', 1, 1, to_timestamp($2)),
           ('h', 'http://x/old', 200, '{}', 1, 1, now() - interval '2 hours')""",
        now,
        earlier,
    )
    await pool.execute(
        """INSERT INTO fetch_failures (job_id, url, error, attempts, failed_at) VALUES
           ('h', 'http://x/4', 'timeout', 1, to_timestamp($1 + 30)),
           ('h', 'http://x/5', 'http_status', 1, to_timestamp($2 + 30))""",
        now,
        earlier,
    )
    h = await history(pool, minutes=10)
    assert len(h.minutes) == len(h.documents) == 10
    assert all(b - a == 60 for a, b in zip(h.minutes, h.minutes[1:], strict=False))
    assert h.minutes[-1] <= time.time() < h.minutes[-1] + 60
    documents = dict(zip(h.minutes, h.documents, strict=True))
    assert (documents[now], documents[earlier], sum(h.documents)) == (2, 1, 3)
    assert set(h.failures) == {"http_status", "timeout"}
    timeouts = dict(zip(h.minutes, h.failures["timeout"], strict=True))
    statuses = dict(zip(h.minutes, h.failures["http_status"], strict=True))
    assert (timeouts[now], sum(timeouts.values())) == (1, 1)
    assert (statuses[earlier], sum(statuses.values())) == (1, 1)
    with pytest.raises(ValueError, match="minutes"):
        await history(pool, minutes=0)


async def test_progress_counts_a_running_jobs_urls_and_outcomes(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings, upstream: Upstream
) -> None:
    """progress() gives a running job's URL count (from its job in Redis) and how many have an
    outcome in Postgres; a job Redis no longer has has no total."""
    urls = [upstream.url("/json/p1"), upstream.url("/status/404"), upstream.url("/gate/p3")]
    (job,) = await enqueue_urls(arq_queue, urls, job_id_prefix="prog")
    totals = JobTotals()
    async with running(long_running(settings.model_copy(update={"copy_chunk_rows": 1}))):

        async def two_landed() -> bool:
            (p,) = await progress(arq_queue, pool, [job], totals)
            return p.landed == 2

        await wait_until(two_landed, timeout=20)
        (p, gone) = await progress(arq_queue, pool, [job, "no-such-job"], totals)
        upstream.gate.set()

        async def finished() -> bool:
            return bool(await arq_queue.exists(result_key_prefix + job))

        await wait_until(finished, timeout=20)  # not stopped mid-job: nothing left half-closed
    assert (p.job_id, p.total, p.landed) == (job, 3, 2)
    assert (gone.total, gone.landed) == (None, 0)
    assert await progress(arq_queue, pool, [], totals) == []


async def test_the_api_samples_the_queue_for_the_dashboards_history(
    arq_queue: ArqRedis, settings: Settings
) -> None:
    """While sampling runs, each sample holds the queue's depth and its oldest wait as Redis
    has them, oldest first."""
    history = QueueHistory(sample_s=0.05, keep_s=60)
    await enqueue_urls(arq_queue, ["https://a.example/1", "https://a.example/2"], batch_size=1)

    async def sampled(queued: int) -> bool:
        return queued in history.as_dict()["queued"]

    async with sampling(history, arq_queue, settings.queue):
        await wait_until(lambda: sampled(2))
        await arq_queue.delete(settings.queue)
        await wait_until(lambda: sampled(0))
    d = history.as_dict()
    first = d["queued"].index(2)
    assert d["oldest_ready_age_s"][first] is not None
    assert d["oldest_ready_age_s"][d["queued"].index(0)] is None
    assert d["at"] == sorted(d["at"])
    assert len(d["at"]) == len(d["queued"]) == len(d["oldest_ready_age_s"])
