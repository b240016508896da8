"""`harvester status`, checked on a real worker's data."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from collections.abc import Callable

import asyncpg
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import Services
from tests.helpers.cli import InProcess, cli_env
from tests.helpers.upstream import Upstream
from worker.ops.status import gather
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
    minute and the worker's heartbeat show; a job enqueued afterwards shows as queued."""
    urls = [upstream.url(f"/json/s{i}") for i in range(8)] + [upstream.url("/status/404")]
    await enqueue_urls(arq_queue, urls, batch_size=5, job_id_prefix="st")
    worker = make_worker()
    await worker.main()  # burst: runs both jobs, keeps its heartbeat until closed
    await enqueue_urls(arq_queue, [upstream.url("/json/later")], job_id_prefix="later")

    status = await gather(settings, arq_queue, pool)
    assert (status.queued, status.ready, status.deferred) == (1, 1, 0)
    assert status.oldest_ready_age_s is not None
    assert status.oldest_ready_age_s >= 0
    assert status.in_progress == []
    assert status.failures_last_hour == {"http_status": 1}
    assert sum(n for _, n in status.urls_per_minute) == 9
    assert len(status.workers) == 1
    assert status.workers[0].host == socket.gethostname()
    assert "queued=2" in status.workers[0].heartbeat  # its first beat saw both jobs
    jobs = {j.job_id: j for j in status.recent_jobs}
    assert set(jobs) == {"st-0", "st-1"}
    assert jobs["st-0"].success is True
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
    for text in ("queued 1 (ready 1, deferred 0)", "recent jobs", "st-0", "http_status", "workers"):
        assert text in screen.stdout, screen.stdout


async def test_status_watch_refreshes_until_interrupted(services: Services, redis: object) -> None:
    """--watch redraws the screen every --interval until SIGINT, then exits 0."""
    env = {**cli_env(services), "TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "status", "--watch", "--interval", "0.2",
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
    assert b"recent jobs" in seen
