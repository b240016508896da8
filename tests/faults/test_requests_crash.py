"""Crash safety for POST batches: a worker killed mid-batch, then resumed, lands every request
(method, URL, body) exactly once, although many share a URL."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import asyncpg

from tests.helpers import wait_until
from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue, outcome_counts
from tests.helpers.upstream import Upstream


async def test_a_killed_post_batch_resumes_without_losing_or_repeating_a_body(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """400 POSTs to 20 URLs in 4 jobs; two SIGKILLs mid-work; the restarted worker skips what
    landed (by method, URL and body hash) and lands the rest: 400 outcomes, no duplicate."""
    total = 400
    requests = [
        {"url": upstream.url(f"/echo/s{i % 20}?delay=0.02"), "json": {"i": i}} for i in range(total)
    ]
    await enqueue(stack, requests, batch_size=100, prefix="posts", shared={"method": "POST"})

    for _ in range(2):
        before = (await outcome_counts(stack.database_url))[0]
        worker = spawn_worker(**FAST)
        await worker.start()

        async def progressed(before: int = before) -> bool:
            return (await outcome_counts(stack.database_url))[0] >= before + 40

        await wait_until(progressed, timeout=40)
        worker.signal(signal.SIGKILL)
        assert await worker.wait(timeout=30) != 0

    worker = spawn_worker(**FAST)
    await worker.start()

    async def all_landed() -> bool:
        return (await outcome_counts(stack.database_url))[0] == total

    await wait_until(all_landed, timeout=90)
    assert await outcome_counts(stack.database_url) == (total, total, 0)
    conn = await asyncpg.connect(stack.database_url)
    try:
        bodies = await conn.fetch("SELECT (request->>'i')::int AS i, body FROM documents")
    finally:
        await conn.close()
    assert sorted(r["i"] for r in bodies) == list(range(total))
    # Each body got its own answer (a plain connection reads jsonb as text).
    assert all(json.loads(r["body"])["body"] == {"i": r["i"]} for r in bodies)
