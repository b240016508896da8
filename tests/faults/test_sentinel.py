"""Redis Sentinel: with REDIS_URL=redis+sentinel://... the worker, the CLI and the API find the
primary through the sentinels, and a primary killed mid-batch is replaced by its replica with
nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.helpers import worker_env
from tests.helpers.cli import InProcess
from tests.helpers.faults import (
    FAST,
    FAULT_QUEUE,
    Stack,
    WorkerProcess,
    enqueue,
    outcome_counts,
    reach,
)
from tests.helpers.sentinel import SentinelGroup
from tests.helpers.upstream import Upstream
from worker.ops.api import create_app, serve
from worker.settings import load_settings

TOKEN = "sentinel-test-token"


@pytest.fixture
async def worker_via_sentinel(
    stack: Stack, sentinels: SentinelGroup, tmp_path: Path
) -> AsyncIterator[WorkerProcess]:
    """A ``harvester worker`` whose REDIS_URL is the sentinel group's (FAST settings); killed
    after the test."""
    worker = WorkerProcess(
        worker_env(stack.database_url, sentinels.url, FAULT_QUEUE, **FAST), tmp_path / "w.log"
    )
    try:
        yield worker
    finally:
        await worker.stop()


async def _queued_on(port: int) -> int:
    """Jobs in the queue of the Valkey on ``port`` (read there, not through the sentinels)."""
    async with aioredis.Redis(port=port) as r:
        return int(await r.zcard(FAULT_QUEUE))


async def test_the_worker_cli_and_api_work_through_sentinel(
    stack: Stack,
    sentinels: SentinelGroup,
    upstream: Upstream,
    cli: InProcess,
    worker_via_sentinel: WorkerProcess,
) -> None:
    """`harvester enqueue` and POST /batches put jobs on the primary the sentinels name, the
    worker runs them, and `harvester status` reads queue and workers through the sentinels."""
    env = worker_env(stack.database_url, sentinels.url, FAULT_QUEUE)
    urls = "".join(upstream.url(f"/slow/{i}?delay=0") + "\n" for i in range(30))
    result = await cli("enqueue", "-", "--batch-size", "10", env=env, stdin=urls)
    assert result.returncode == 0, result.stderr
    settings = load_settings(
        database_url=stack.database_url, redis_url=sentinels.url, queue=FAULT_QUEUE, api_token=TOKEN
    )
    async with (
        serve(create_app(settings), "127.0.0.1", 0) as port,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
    ):
        batch = {"urls": [upstream.url(f"/slow/api-{i}?delay=0") for i in range(10)]}
        async with session.post(f"http://127.0.0.1:{port}/batches", json=batch) as r:
            assert r.status == 202, await r.text()
        async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert (await r.json())["redis"] == "ok"
    assert await _queued_on(sentinels.primary_port) == 4

    await worker_via_sentinel.start()
    await reach(stack, 40, timeout=60)
    assert await outcome_counts(stack.database_url) == (40, 40, 0)
    status = await cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["queued"] == 0
    assert [w["alive"] for w in data["workers"]] == [True], data["workers"]
    assert await _queued_on(sentinels.primary_port) == 0


async def test_a_primary_killed_mid_batch_fails_over_and_loses_nothing(
    stack: Stack,
    sentinels: SentinelGroup,
    upstream: Upstream,
    worker_via_sentinel: WorkerProcess,
) -> None:
    """300 URLs in 6 jobs; the primary is SIGKILLed mid-batch; the sentinels promote the
    replica, the worker carries on there, and every URL ends with exactly one outcome."""
    total = 300
    urls = [upstream.url(f"/slow/{i}?delay=0.1") for i in range(total)]
    await enqueue(stack, urls, batch_size=50, prefix="failover", redis_url=sentinels.url)
    # Replication is asynchronous: a job the primary took but had not yet sent to the replica
    # would be lost by Redis itself. Wait until the replica has them (docs/operations.md).
    await asyncio.to_thread(sentinels.wait_replicated)
    await worker_via_sentinel.start()
    await reach(stack, 60, timeout=60)

    # The upstream answers from this event loop: block it nowhere.
    await asyncio.to_thread(sentinels.kill_primary)
    assert (await outcome_counts(stack.database_url))[0] < total  # mid-batch indeed
    failover_s = await asyncio.to_thread(sentinels.wait_failover, 30)
    await reach(stack, total, timeout=90)

    assert worker_via_sentinel.running, worker_via_sentinel.log()[-3000:]
    assert await outcome_counts(stack.database_url) == (total, total, 0)
    assert await _queued_on(sentinels.replica_port) == 0
    print(f"failover took {failover_s:.1f} s")
