"""The harvester command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import TEST_QUEUE, Services, _with_database
from tests.helpers import worker_env
from tests.upstream import Upstream


def _env(services: Services, **extra: str) -> dict[str, str]:
    env = worker_env(services.database_url, services.redis_url, TEST_QUEUE)
    env.update(extra)
    return env


async def _run(
    *argv: str, env: dict[str, str], stdin: str | None = None, timeout: float = 120
) -> Result:
    """Run a command without blocking the loop: the scripted upstream lives on this loop too."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate((stdin or "").encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def _harvester(*args: str, env: dict[str, str], stdin: str | None = None) -> Result:
    return await _run(sys.executable, "-m", "worker", *args, env=env, stdin=stdin)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def test_migrate_creates_the_schema_once(services: Services) -> None:
    """`harvester migrate` applies every migration, then nothing on a second run."""
    name = f"harvester_cli_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = _env(services, DATABASE_URL=_with_database(services.database_url, name))
        first = await _harvester("migrate", env=env)
        second = await _harvester("migrate", env=env)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    assert first.returncode == 0, first.stderr
    assert "applied 5 migration(s)" in first.stdout
    assert "001_documents" in first.stdout
    assert second.returncode == 0
    assert "applied 0 migration(s)" in second.stdout


async def test_enqueue_then_worker_burst_lands_the_urls(
    services: Services, upstream: Upstream, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """`enqueue -` prints one job id per batch; `worker --burst` lands every URL."""
    urls = [upstream.url(f"/json/{i}") for i in range(5)]
    text = "# a comment\n" + "\n".join(urls[:3]) + "\n\n" + "\n".join(urls[3:]) + "\n"
    env = _env(services)
    out = await _harvester(
        "enqueue", "-", "--batch-size", "2", "--source", "cli", env=env, stdin=text
    )
    assert out.returncode == 0, out.stderr
    job_ids = out.stdout.split()
    assert len(job_ids) == 3
    payload = json.loads(await redis.get(f"arq:job:{job_ids[0]}"))
    assert payload["f"] == "fetch_batch"
    assert payload["k"] == {"urls": urls[:2], "source": "cli"}

    run = await _harvester("worker", "--burst", env=env)
    assert run.returncode == 0, run.stderr
    assert "job.done" in run.stderr
    rows = await pool.fetch("SELECT job_id, url FROM documents WHERE source = 'cli'")
    assert sorted(r["url"] for r in rows) == sorted(urls)
    assert {r["job_id"] for r in rows} == set(job_ids)


async def test_enqueue_shows_progress_on_a_terminal_and_is_quiet_when_piped(
    services: Services, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Reading a file with stderr on a terminal draws a progress bar that reaches 100%; piped,
    stderr stays empty and stdout carries only the job ids."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"https://api.example/{i}\n" for i in range(3000)))
    tty = await _harvester(
        "enqueue", str(urls), "--batch-size", "1000", env=_env(services, TTY_COMPATIBLE="1")
    )
    assert tty.returncode == 0, tty.stderr
    assert "enqueueing" in tty.stderr
    assert "100%" in tty.stderr
    assert len(tty.stdout.split()) == 3
    piped = await _harvester("enqueue", str(urls), "--batch-size", "1000", env=_env(services))
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert len(piped.stdout.split()) == 3


async def test_arq_cli_runs_the_settings_class(
    services: Services, upstream: Upstream, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """`arq worker.app.WorkerSettings` is an equivalent way to run the worker."""
    env = _env(services)
    out = await _harvester(
        "enqueue", "-", "--source", "arqcli", env=env, stdin=upstream.url("/json/a") + "\n"
    )
    assert out.returncode == 0, out.stderr
    arq_bin = str(Path(sys.executable).with_name("arq"))
    run = await _run(arq_bin, "worker.runtime.app.WorkerSettings", "--burst", env=env)
    assert run.returncode == 0, run.stderr
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE source = 'arqcli'") == 1


async def test_invalid_configuration_exits_with_the_variable_named(services: Services) -> None:
    """A bad setting stops the command with exit code 2 and names the variable."""
    run = await _harvester("worker", "--burst", env=_env(services, HARVESTER_CONCURRENCY="0"))
    assert run.returncode == 2
    assert "HARVESTER_CONCURRENCY" in run.stderr
    assert "Traceback" not in run.stderr


async def test_enqueue_rejects_a_bad_batch_size(services: Services) -> None:
    """CLI arguments are validated too."""
    run = await _harvester("enqueue", "-", "--batch-size", "0", env=_env(services), stdin="")
    assert run.returncode == 2
    assert "--batch-size" in run.stderr


@pytest.mark.integration
def test_demo_runs_end_to_end_in_a_reduced_size(tmp_path: Path) -> None:
    """`harvester demo` starts its own servers, lands every URL and prints a summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker",
            "demo",
            "--urls",
            "300",
            "--batch-size",
            "100",
            "--dir",
            str(tmp_path / "demo"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "harvester demo summary" in run.stdout
    assert "URLs enqueued     301" in run.stdout
    assert "documents         294" in run.stdout
    assert "http_status     3" in run.stdout
    assert "invalid_url     1" in run.stdout
    assert "URLs/s" in run.stdout


async def test_health_reflects_the_workers_heartbeat(
    services: Services, redis: aioredis.Redis, pool: asyncpg.Pool, make_worker
) -> None:  # type: ignore[no-untyped-def]
    """`harvester health` exits 1 with no worker, 0 once a worker has written its heartbeat."""
    env = _env(services)
    before = await _harvester("health", env=env)
    assert before.returncode == 1
    assert "unhealthy" in before.stdout
    worker = make_worker()
    await worker.async_run()
    after = await _harvester("health", env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "healthy: " in after.stdout


async def test_a_database_url_with_a_bad_port_is_a_configuration_error(services: Services) -> None:
    """DATABASE_URL=...:notaport exits 2 with one line naming the variable, no traceback."""
    env = _env(services, DATABASE_URL="postgresql://postgres@:notaport/db")
    result = await _harvester("migrate", env=env)
    assert result.returncode == 2, result.stderr
    assert "DATABASE_URL: the port 'notaport' is not a number" in result.stderr
    assert "Traceback" not in result.stderr
