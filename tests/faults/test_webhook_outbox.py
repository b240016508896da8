"""A webhook whose receiver is down for the worker's whole life survives the worker's SIGKILL:
the outbox keeps it, and the next worker delivers it once the receiver is up."""

from __future__ import annotations

import hashlib
import hmac
import signal
from collections.abc import Callable

import asyncpg

from tests.helpers import closed_port, wait_until
from tests.helpers.faults import FAST, Stack, WorkerProcess, enqueue
from tests.helpers.upstream import Upstream

SECRET = "whsec-fault-0123456789abcdef"
WEBHOOKS = {"webhook_secret": SECRET, "job_retry_delay": 0.2, "job_retry_max_delay": 0.5}


async def _outbox(database_url: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchrow("SELECT state, attempts, delivery_id FROM webhook_outbox")
    finally:
        await conn.close()


async def test_a_delivery_outlives_a_killed_worker_and_arrives_from_the_next(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Attempts to a receiver that refuses connections, then SIGKILL; a new worker, the
    receiver up: exactly one delivery, with the row's delivery id and a valid signature."""
    port = closed_port()
    hook = f"http://127.0.0.1:{port}/echo/hook"
    await enqueue(stack, [upstream.url("/json/a")], 10, "hook", shared={"notify_url": hook})
    first = spawn_worker(**{**FAST, **WEBHOOKS})
    await first.start()

    async def tried_twice() -> bool:
        row = await _outbox(stack.database_url)
        return row is not None and row["attempts"] >= 2

    await wait_until(tried_twice, timeout=30)
    first.signal(signal.SIGKILL)
    await first.wait(timeout=20)
    row = await _outbox(stack.database_url)
    assert row is not None
    assert row["state"] == "pending"

    async with Upstream(port=port).serving() as receiver:
        second = spawn_worker(**{**FAST, **WEBHOOKS})
        await second.start()

        async def delivered() -> bool:
            row = await _outbox(stack.database_url)
            return row is not None and row["state"] == "delivered"

        await wait_until(delivered, timeout=30)
        (hit,) = receiver.hits_for("/echo/hook")
    assert hit.headers["Harvester-Delivery"] == str(row["delivery_id"])
    t, v1 = (part.split("=", 1)[1] for part in hit.headers["Harvester-Signature"].split(","))
    assert v1 == hmac.new(SECRET.encode(), f"{t}.".encode() + hit.body, hashlib.sha256).hexdigest()
