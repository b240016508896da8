"""The README's examples, run as written against the session's servers."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis
from arq.worker import Worker

from tests.helpers import TEST_QUEUE, Services, wait_until
from tests.helpers.cli import run
from tests.helpers.docs import example, localised
from tests.helpers.upstream import Upstream


async def test_the_python_example_enqueues_with_arq_alone_and_prints_the_summary(
    repo_root: Path,
    tmp_path: Path,
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
) -> None:
    """The README's Python script (arq and the stdlib only) enqueues a job a worker lands,
    waits for it and prints its summary; run again, it finds the same job instead of failing."""
    script = tmp_path / "enqueue.py"
    code = localised(example(repo_root / "README.md", "python-enqueue"), upstream.url("/json"))
    assert "import worker" not in code
    assert "from worker" not in code
    script.write_text(code)
    env = {"REDIS_URL": services.redis_url, "HARVESTER_QUEUE": TEST_QUEUE, "PATH": ""}
    first = asyncio.create_task(run(sys.executable, str(script), env=env))
    await wait_until(lambda: redis.exists("arq:job:catalog-2026-11-25-0001"))
    await make_worker().main()
    done = await first
    assert done.returncode == 0, done.stderr
    assert "'documents': 1" in done.stdout
    again = await run(sys.executable, str(script), env=env)
    assert again.returncode == 0, again.stderr
    assert "'documents': 1" in again.stdout
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE source = 'catalog'") == 1
