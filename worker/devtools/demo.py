"""`harvester demo`: the whole product on one machine, with nothing but Python.

Starts embedded Postgres and Valkey under ``.harvester/demo``, migrates, serves a local sample
API, enqueues a few thousand URLs as JSON jobs, runs ``harvester worker --burst`` as a separate
process (as a Procfile would), then prints what landed. Then it registers scheduled sources and
polls them twice, as the worker's cron would, to show conditional requests and change
detection. It stops everything it started.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from pathlib import Path

import asyncpg

from worker.devtools import sampleapi
from worker.devtools.embedded import embedded_stack
from worker.engine import store
from worker.engine.migrate import migrate
from worker.queue import client
from worker.scheduling import polls, sources
from worker.settings import Settings, load_settings

LANDED = "SELECT (SELECT count(*) FROM documents) + (SELECT count(*) FROM fetch_failures)"
QUERY = (
    "SELECT url, status, attempts, body->>'name' AS name FROM documents "
    "ORDER BY fetched_at DESC LIMIT 3;"
)


async def _poll_sources(settings: Settings, env: dict[str, str], base: str, n: int) -> int:
    """Register ``n`` sample feeds and poll them twice; print what each poll did."""
    async with store.open_pool(settings) as pool:
        urls = [f"{base}/feeds/{i}" for i in range(n)]
        await sources.add(pool, urls, every=900, name="demo-feeds")
        print(f"\nregistered {n} scheduled sources (harvester sources add ... --every 15m)")
        for round_ in (1, 2):
            if round_ == 2:
                await pool.execute("UPDATE sources SET next_due_at = now()")  # skip the wait
            docs_before = await pool.fetchval("SELECT count(*) FROM documents")
            async with client.open_queue(settings) as redis:
                # What the poll_sources cron task does every minute inside the worker.
                claimed = await polls.enqueue_due(pool, redis, settings)
            code, elapsed, _ = await _worker(env, settings)
            if code != 0:
                return code
            docs = await pool.fetchval("SELECT count(*) FROM documents") - docs_before
            outcomes = await pool.fetch(
                "SELECT last_outcome, count(*) AS n FROM sources GROUP BY 1 ORDER BY 1"
            )
            summary = ", ".join(f"{r['last_outcome']} {r['n']}" for r in outcomes)
            print(
                f"  poll {round_}: {claimed.sources} sources in {len(claimed.jobs)} jobs, "
                f"{elapsed:.2f} s; {summary}; {docs} new documents"
            )
    return 0


async def _run(stack_db: str, stack_redis: str, count: int, batch_size: int, n_sources: int) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": stack_db,
        "REDIS_URL": stack_redis,
        # The sample API is on loopback, which the SSRF guard refuses unless opened.
        "HARVESTER_ALLOWED_NETWORKS": "127.0.0.0/8",
        "HARVESTER_MAX_BODY_BYTES": str(1024 * 1024),
        "HARVESTER_QUEUE": "harvester:demo",
    }
    settings = load_settings(
        database_url=stack_db, redis_url=stack_redis, queue=env["HARVESTER_QUEUE"]
    )
    await migrate(settings.database_url)
    async with sampleapi.serve() as base:
        urls = sampleapi.demo_urls(base, count)
        async with client.open_queue(settings) as redis:
            job_ids = await client.enqueue_urls(redis, urls, batch_size=batch_size, source="demo")
        print(f"enqueued {len(urls)} URLs in {len(job_ids)} jobs; starting the worker", flush=True)
        code, elapsed, screen = await _worker(env, settings, status_after=len(urls) // 4)
        if code == 0:
            code = await _report(settings, urls, elapsed)
        if code == 0 and screen:
            print("\n$ harvester status   # taken while the worker was running")
            print(screen, end="")
        if code == 0 and n_sources:
            code = await _poll_sources(settings, env, base, n_sources)
    if code != 0:
        print(f"demo failed with exit code {code}", file=sys.stderr)
    return code


async def _worker(
    env: dict[str, str], settings: Settings, status_after: int | None = None
) -> tuple[int, float, str]:
    """Run ``harvester worker --burst``; return its exit code, wall time and, if
    ``status_after`` is given, what `harvester status` showed once that many URLs were in."""
    from rich.console import Console

    from worker.ops.screen import render
    from worker.ops.status import gather

    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "worker", "--burst", env=env
    )
    screen = ""
    async with store.open_pool(settings) as pool, client.open_queue(settings) as redis:
        while status_after is not None and proc.returncode is None:
            if await pool.fetchval(LANDED) >= status_after:
                console = Console(width=110, file=io.StringIO(), force_terminal=False)
                console.print(render(await gather(settings, redis, pool)))
                screen = console.file.getvalue()  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.02)
    code = await proc.wait()
    return code, time.monotonic() - started, screen


async def _report(settings: Settings, urls: list[str], elapsed: float) -> int:
    conn = await asyncpg.connect(settings.database_url)
    try:
        docs = await conn.fetchval("SELECT count(*) FROM documents")
        kinds = await conn.fetch(
            "SELECT error, count(*) AS n FROM fetch_failures GROUP BY error ORDER BY n DESC"
        )
        sample = await conn.fetch(QUERY)
    finally:
        await conn.close()
    failed = sum(r["n"] for r in kinds)
    print()
    print("harvester demo summary")
    print(f"  URLs enqueued     {len(urls)}")
    print(f"  documents         {docs}")
    print(f"  failures          {failed}")
    for r in kinds:
        print(f"    {r['error']:<15} {r['n']}")
    print(f"  worker wall time  {elapsed:.2f} s (start-up included)")
    print(f"  throughput        {(docs + failed) / elapsed:.0f} URLs/s")
    print()
    print("The last documents, as the demo's database held them:")
    print(f"  {QUERY}")
    for r in sample:
        print(f"    {r['url']}  status={r['status']} attempts={r['attempts']} name={r['name']!r}")
    missing = len(set(urls)) - docs - failed
    if missing:
        print(f"ERROR: {missing} URLs have no outcome", file=sys.stderr)
        return 1
    return 0


def run_demo(root: Path, count: int = 5000, batch_size: int = 500, n_sources: int = 300) -> int:
    """Run the demo under ``root``; return the process exit code."""
    print(f"starting embedded Postgres and Valkey under {root}", flush=True)
    with embedded_stack(root) as stack:
        code = asyncio.run(_run(stack.database_url, stack.redis_url, count, batch_size, n_sources))
    if code == 0:
        print(
            f"\nThe demo's Postgres and Valkey have stopped; their files are in {root} (delete"
            " it to start afresh).\nTo run harvester on your own servers, follow the README's"
            " quickstart."
        )
    return code
