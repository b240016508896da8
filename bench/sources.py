"""`python -m bench.sources`: what a poll of many registered sources costs when nothing changed.

Starts embedded Postgres and Valkey and the sample API, registers N sources of one kind, polls
them once (everything lands), then polls them again and reports the second poll: requests sent,
304s, documents written, WAL bytes Postgres wrote, and wall time (cron claim + worker). Kinds:

  etag   the source sends an ETag: the second poll is conditional and answered 304
  hash   no validators, same body: the second poll downloads it and finds the same hash

The worker runs in this process in burst mode, after the claim, as `harvester worker` would
pick the jobs the cron enqueued. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import asyncpg

from worker.devtools import sampleapi
from worker.devtools.embedded import embedded_stack
from worker.engine.migrate import migrate
from worker.queue.client import open_queue
from worker.runtime.app import create_worker
from worker.scheduling import polls, sources
from worker.settings import Settings, load_settings

_KINDS = {"etag": 0, "hash": 1}  # n % 3 of the sample API's /feeds/{n} (see worker.sampleapi)


async def _poll(settings: Settings, pool: asyncpg.Pool) -> tuple[float, int]:
    started = time.monotonic()
    async with open_queue(settings) as redis:
        claimed = await polls.enqueue_due(pool, redis, settings)
    worker = create_worker(settings, burst=True, handle_signals=False, cron_jobs=[])
    try:
        await worker.main()
    finally:
        await worker.close()
    return time.monotonic() - started, claimed.sources


async def _measure(settings: Settings, base: str, kind: str, n: int) -> None:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        await pool.execute("TRUNCATE documents, fetch_failures, sources, latest_document_refs")
        step = _KINDS[kind]
        urls = [f"{base}/feeds/{3 * i + step}" for i in range(n)]
        await sources.add(pool, urls, every=900, name=f"bench-{kind}")
        first, _ = await _poll(settings, pool)
        await pool.execute("UPDATE sources SET next_due_at = now()")
        await pool.execute("CHECKPOINT")
        docs0 = await pool.fetchval("SELECT count(*) FROM documents")
        wal0 = await pool.fetchval("SELECT pg_current_wal_lsn()")
        second, claimed = await _poll(settings, pool)
        wal = await pool.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", wal0)
        docs = await pool.fetchval("SELECT count(*) FROM documents") - docs0
        outcomes = dict(
            await pool.fetch("SELECT last_outcome, count(*) FROM sources GROUP BY 1")  # type: ignore[arg-type]
        )
    finally:
        await pool.close()
    print(
        f"{kind:5} {n:>6} sources | first poll {first:5.2f} s | second poll {second:5.2f} s, "
        f"{claimed / second:6.0f} sources/s, {claimed} requests, outcomes {outcomes}, "
        f"{docs} documents, {int(wal) / 1e6:.1f} MB WAL ({int(wal) / n:.0f} B/source)"
    )


async def _main(root: Path, n: int, kinds: list[str]) -> None:
    with embedded_stack(root) as stack:
        settings = load_settings(
            database_url=stack.database_url,
            redis_url=stack.redis_url,
            queue="harvester:bench-sources",
            allowed_networks="127.0.0.0/8",
            sources_batch_size=500,
            log_level="WARNING",
        )
        await migrate(settings.database_url)
        async with sampleapi.serve() as base:
            for kind in kinds:
                await _measure(settings, base, kind, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=5000)
    parser.add_argument("--kind", choices=sorted(_KINDS), action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="harvester-bench-sources-") as tmp:
        asyncio.run(_main(Path(tmp), args.sources, args.kind or ["etag", "hash"]))


if __name__ == "__main__":
    main()
