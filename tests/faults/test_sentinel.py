"""Redis Sentinel: with REDIS_URL=redis+sentinel://... the worker, the CLI and the API find the
primary through the sentinels, and a primary killed mid-batch is replaced by its replica with
nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import json
import time
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
from worker.queue.client import open_queue
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


async def _queued_on(port: int, password: str | None = None) -> int:
    """Jobs in the queue of the Valkey on ``port`` (read there, not through the sentinels)."""
    async with aioredis.Redis(port=port, password=password) as r:
        return int(await r.zcard(FAULT_QUEUE))


async def test_the_worker_cli_and_api_work_through_sentinel(
    stack: Stack,
    sentinels: SentinelGroup,
    upstream: Upstream,
    cli: InProcess,
    worker_via_sentinel: WorkerProcess,
) -> None:
    """`harvester enqueue` and POST /batches put jobs on the primary the sentinels name, the
    worker runs them, and `harvester status` and `health` read the queue and the workers
    through the sentinels."""
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
    health = await cli("health", env=env)
    assert health.returncode == 0, health.stdout + health.stderr
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
    async with aioredis.Redis(port=sentinels.replica_port) as promoted:
        results = [await promoted.exists(f"arq:result:failover-{n}") for n in range(6)]
    assert results == [1] * 6  # every job's end was recorded on the promoted replica
    print(f"failover took {failover_s:.1f} s")


@pytest.mark.parametrize("sentinels", [True], ids=["passwords"], indirect=True)
async def test_passwords_reach_the_primary_and_the_sentinels_and_a_wrong_one_is_exit_2(
    stack: Stack, sentinels: SentinelGroup, cli: InProcess
) -> None:
    """The URL's password goes to the primary and ``sentinel_password`` to the sentinels; a
    wrong one of either is a configuration error (exit 2) that shows neither password."""
    env = worker_env(stack.database_url, sentinels.url, FAULT_QUEUE)
    result = await cli("enqueue", "-", env=env, stdin="https://a.example/\n")
    assert result.returncode == 0, result.stderr
    assert await _queued_on(sentinels.primary_port, sentinels.password) == 1
    health = await cli("status", "--json", env=env)
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["queued"] == 1

    for wrong, says in (
        (sentinels.url.replace(":data-pw@", ":nope@"), "Redis refused the credentials"),
        (sentinels.url.replace("=sentinel-pw", "=nope"), "the sentinels refused the credentials"),
        (sentinels.url.split("?")[0], "the sentinels refused the credentials"),
    ):
        result = await cli("enqueue", "-", env={**env, "REDIS_URL": wrong}, stdin="x\n")
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"harvester: REDIS_URL: {says}"), result.stderr
        assert "pw" not in result.stderr, result.stderr
        assert "nope" not in result.stderr, result.stderr


async def test_a_command_over_a_failover_waits_for_the_promotion_not_the_retry_budget(
    sentinels: SentinelGroup,
) -> None:
    """A command sent as the primary dies succeeds on the promoted replica seconds later: each
    retry asks the sentinels again, rather than retrying the dead address for the whole
    HARVESTER_REDIS_RETRY_TIME (30 s)."""
    settings = load_settings(redis_url=sentinels.url, queue=FAULT_QUEUE)
    async with open_queue(settings) as redis:
        await redis.set("before", 1)
        await asyncio.to_thread(sentinels.wait_replicated)
        await asyncio.to_thread(sentinels.kill_primary)
        started = time.monotonic()
        assert await redis.incr("before") == 2
        took = time.monotonic() - started
    assert sentinels.primary() == sentinels.replica_port
    # A failover takes down-after-milliseconds (1 s) and about 2 s more; 24 s or more would be
    # the dead address retried until the budget ran out.
    assert took < 15, took


async def test_a_client_follows_a_switchover_off_a_primary_that_stays_up(
    sentinels: SentinelGroup,
) -> None:
    """After SENTINEL FAILOVER the old primary lives on as a replica: a client's open connection
    to it is dropped (READONLY or closed) and the next write lands on the new primary."""
    settings = load_settings(redis_url=sentinels.url, queue=FAULT_QUEUE)
    async with open_queue(settings) as redis:
        assert await redis.incr("n") == 1  # a connection to the first primary, kept open
        await asyncio.to_thread(sentinels.wait_replicated)
        await asyncio.to_thread(sentinels.switch_over)
        await asyncio.to_thread(sentinels.wait_failover, 30)
        # Until the sentinels demote it, the old primary still takes writes, and loses them
        # when it follows the new one (docs/operations.md): write once it is a replica.
        await asyncio.to_thread(sentinels.wait_demoted, 30)
        assert await redis.incr("n") == 2
    async with aioredis.Redis(port=sentinels.replica_port) as promoted:
        assert await promoted.get("n") == b"2"
        assert (await promoted.info("replication"))["role"] == "master"
