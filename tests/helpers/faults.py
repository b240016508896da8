"""Fault-suite helpers: a private Postgres and Valkey to stop and restart, workers run as the
Procfile runs them (``harvester worker`` in a subprocess), and the (outcomes, documents,
duplicates) count every fault test asserts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.helpers import wait_until
from tests.helpers.processes import alive, descendants, stop_tree
from worker.devtools.embedded import EmbeddedPostgres, EmbeddedRedis
from worker.queue.client import Item, enqueue_batches, open_queue, plan_batches
from worker.settings import load_settings

FAULT_QUEUE = "harvester:faults"

# Short settings so that a SIGKILLed job's lock (job timeout + 10 s) expires quickly.
FAST = {
    "job_timeout": 6,
    "request_timeout": 2,
    "retry_max_time": 2,
    "concurrency": 4,
    "per_host": 4,
    "max_jobs": 2,
    "shutdown_grace": 1,
    # Small chunks, so kills land mid-COPY as well as mid-fetch.
    "copy_chunk_rows": 20,
}


async def enqueue(
    stack: Stack,
    urls: Sequence[Item],
    batch_size: int,
    prefix: str,
    shared: Mapping[str, object] | None = None,
    redis_url: str | None = None,
) -> list[str]:
    """Enqueue ``urls`` (or request objects, with the ``shared`` fields) on the stack's queue
    (or on the Redis at ``redis_url``)."""
    settings = load_settings(
        redis_url=redis_url or stack.redis_url, database_url=stack.database_url, queue=FAULT_QUEUE
    )
    batches = plan_batches(
        urls,
        batch_size=batch_size,
        source=None,
        max_urls=None,
        max_job_bytes=8 << 20,
        shared=shared,
    )
    async with open_queue(settings) as redis:
        return [job_id async for job_id in enqueue_batches(redis, batches, job_id_prefix=prefix)]


@dataclass
class Stack:
    """A private Postgres and Valkey; both keep their port across restarts."""

    pg: EmbeddedPostgres
    redis: EmbeddedRedis

    @property
    def database_url(self) -> str:
        return self.pg.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    async def restart_postgres(self, mode: str, down_for: float = 0.0) -> None:
        await asyncio.to_thread(self.pg.stop, mode)
        if down_for:
            await asyncio.sleep(down_for)  # the length of the injected outage
        await asyncio.to_thread(self.pg.start)

    async def restart_redis(self, down_for: float) -> None:
        await asyncio.to_thread(self.redis.stop)
        await asyncio.sleep(down_for)  # the length of the injected outage
        await asyncio.to_thread(self.redis.start)


class WorkerProcess:
    """``python -m worker worker [ARGS]``, as the Procfile's ``worker:`` line runs it."""

    def __init__(self, env: dict[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.args = list(args)
        self.proc: asyncio.subprocess.Process | None = None
        self._seen: set[int] = set()

    def children(self) -> list[int]:
        """The processes the worker runs now (a supervisor's children), remembered so that
        `stop` kills them even once the parent is gone."""
        found = [] if self.proc is None else alive(descendants(self.proc.pid))
        self._seen.update(found)
        return sorted(found)

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker",
                "worker",
                *self.args,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self) -> None:
        """SIGKILL the worker and every process it started (a supervisor's children)."""
        if self.proc is not None:
            self.children()
            await stop_tree(self.proc)
        for pid in alive(sorted(self._seen)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def outcome_counts(database_url: str) -> tuple[int, int, int]:
    """(distinct outcomes, documents, duplicated outcomes) across both tables, an outcome being a
    request of a job: (job, method, url, body hash), for a GET (job, url)."""
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
            WITH o AS (SELECT job_id, method, url, body_hash FROM documents
                       UNION ALL SELECT job_id, method, url, body_hash FROM fetch_failures)
            SELECT (SELECT count(*) FROM (SELECT DISTINCT * FROM o) d) AS outcomes,
                   (SELECT count(*) FROM documents) AS documents,
                   (SELECT count(*) FROM (SELECT 1 FROM o GROUP BY job_id, method, url, body_hash
                                          HAVING count(*) > 1) x) AS dups
            """
        )
    finally:
        await conn.close()
    assert row is not None
    return row["outcomes"], row["documents"], row["dups"]


async def reach(stack: Stack, n: int, timeout: float) -> None:
    """Wait until at least ``n`` (job, url) outcomes have landed (Postgres may be down meanwhile)."""

    async def reached() -> bool:
        counts = await try_outcome_counts(stack.database_url)
        return counts is not None and counts[0] >= n

    await wait_until(reached, timeout=timeout)


async def try_outcome_counts(database_url: str) -> tuple[int, int, int] | None:
    """`outcome_counts`, or None while Postgres is down."""
    try:
        return await outcome_counts(database_url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
