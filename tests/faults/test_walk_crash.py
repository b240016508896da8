"""A worker SIGKILLed mid-walk: the job's next run goes on with the walk and lands no page twice."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable

import asyncpg

from tests.helpers import wait_until
from tests.helpers.faults import FAST, FAULT_QUEUE, Stack, WorkerProcess
from tests.helpers.upstream import Upstream
from worker.queue.client import enqueue_batch, open_queue
from worker.queue.payload import make_batch
from worker.settings import load_settings


async def _pages(database_url: str) -> list[tuple[str, int]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT url, page FROM documents")
    finally:
        await conn.close()
    return [(r["url"], r["page"]) for r in rows]


async def test_a_walk_killed_midway_goes_on_without_duplicate_pages(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Two walks of 30 pages, one held at page 12: SIGKILL once its first 11 pages landed.
    After the job's lock expires, the job runs again: both walks end with pages 1..30 exactly
    once, and the held walk's landed pages are not fetched again."""
    held = upstream.url("/pages/link/held?n=30&gate_at=12")
    free = upstream.url("/pages/link/free?n=30")
    settings = load_settings(
        redis_url=stack.redis_url, database_url=stack.database_url, queue=FAULT_QUEUE
    )
    batch = make_batch(urls=[held, free], paginate={"next": "link"})
    async with open_queue(settings) as redis:
        await enqueue_batch(redis, batch, job_id="walk-crash")
    worker = spawn_worker(**FAST)
    await worker.start()

    async def eleven_landed() -> bool:
        pages = await _pages(stack.database_url)
        return sum(url == held for url, _ in pages) == 11

    await wait_until(eleven_landed, timeout=30)
    worker.signal(signal.SIGKILL)
    await worker.wait()
    upstream.gate.set()
    again = spawn_worker(**FAST)
    await again.start()

    async def all_landed() -> bool:
        return len(await _pages(stack.database_url)) >= 60

    await wait_until(all_landed, timeout=FAST["job_timeout"] + 10 + 30)
    pages = await _pages(stack.database_url)
    assert sorted(pages) == sorted((url, n) for url in (held, free) for n in range(1, 31))
    asked = Counter(h.path for h in upstream.hits_for("/pages/link/held"))
    # Pages 1 to 11 landed before the kill and were not asked again; page 12 was asked by both.
    assert all(count == 1 for path, count in asked.items() if not path.endswith("page=12"))
    assert asked["/pages/link/held?n=30&gate_at=12&page=12"] == 2
