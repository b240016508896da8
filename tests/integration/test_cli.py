"""The harvester command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.helpers import TEST_QUEUE, Services, with_database
from tests.helpers.cli import InProcess, cli_env, harvester, run
from tests.helpers.upstream import Upstream
from worker.engine.migrate import discover
from worker.queue.serialization import job_deserializer


async def test_migrate_creates_the_schema_once(cli: InProcess, services: Services) -> None:
    """`harvester migrate` applies every migration, then nothing on a second run."""
    name = f"harvester_cli_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        env = cli_env(services, DATABASE_URL=with_database(services.database_url, name))
        first = await cli("migrate", env=env)
        second = await cli("migrate", env=env)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    assert first.returncode == 0, first.stderr
    shipped = discover()  # every migration the package ships, whichever branch added them
    assert f"applied {len(shipped)} migration(s)" in first.stdout
    assert all(f"{m.version:03d}_{m.name}" in first.stdout for m in shipped)
    assert "001_documents" in first.stdout
    assert second.returncode == 0
    assert "applied 0 migration(s)" in second.stdout


async def test_enqueue_then_worker_burst_lands_the_urls(
    cli: InProcess,
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
) -> None:
    """`enqueue -` prints one job id per batch; `worker --burst` lands every URL."""
    urls = [upstream.url(f"/json/{i}") for i in range(5)]
    text = "# a comment\n" + "\n".join(urls[:3]) + "\n\n" + "\n".join(urls[3:]) + "\n"
    env = cli_env(services)
    out = await cli("enqueue", "-", "--batch-size", "2", "--source", "cli", env=env, stdin=text)
    assert out.returncode == 0, out.stderr
    job_ids = out.stdout.split()
    assert len(job_ids) == 3
    payload = json.loads(await redis.get(f"arq:job:{job_ids[0]}"))
    assert payload["f"] == "fetch_batch"
    assert payload["k"] == {"urls": urls[:2], "source": "cli"}

    result = await harvester("worker", "--burst", env=env)
    assert result.returncode == 0, result.stderr
    assert "job.done" in result.stderr
    rows = await pool.fetch("SELECT job_id, url FROM documents WHERE source = 'cli'")
    assert sorted(r["url"] for r in rows) == sorted(urls)
    assert {r["job_id"] for r in rows} == set(job_ids)


async def test_enqueue_shows_progress_on_a_terminal_and_is_quiet_when_piped(
    cli: InProcess, services: Services, redis: aioredis.Redis, tmp_path: Path
) -> None:
    """Reading a file with stderr on a terminal draws a progress bar that reaches 100%; piped,
    stderr stays empty and stdout carries only the job ids."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"https://api.example/{i}\n" for i in range(3000)))
    tty = await cli(
        "enqueue", str(urls), "--batch-size", "1000", env=cli_env(services, TTY_COMPATIBLE="1")
    )
    assert tty.returncode == 0, tty.stderr
    assert "enqueueing" in tty.stderr
    assert "100%" in tty.stderr
    assert len(tty.stdout.split()) == 3
    piped = await cli("enqueue", str(urls), "--batch-size", "1000", env=cli_env(services))
    assert piped.returncode == 0
    assert piped.stderr == ""
    assert len(piped.stdout.split()) == 3


async def test_arq_cli_runs_the_settings_class(
    services: Services, upstream: Upstream, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """`arq worker.app.WorkerSettings` is an equivalent way to run the worker."""
    env = cli_env(services)
    out = await harvester(
        "enqueue", "-", "--source", "arqcli", env=env, stdin=upstream.url("/json/a") + "\n"
    )
    assert out.returncode == 0, out.stderr
    arq_bin = str(Path(sys.executable).with_name("arq"))
    result = await run(arq_bin, "worker.runtime.app.WorkerSettings", "--burst", env=env)
    assert result.returncode == 0, result.stderr
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE source = 'arqcli'") == 1


async def test_invalid_configuration_exits_with_the_variable_named(
    cli: InProcess, services: Services
) -> None:
    """A bad setting stops the command with exit code 2 and names the variable."""
    result = await cli("worker", "--burst", env=cli_env(services, HARVESTER_CONCURRENCY="0"))
    assert result.returncode == 2
    assert "HARVESTER_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


async def test_enqueue_rejects_a_bad_batch_size(cli: InProcess, services: Services) -> None:
    """CLI arguments are validated too."""
    result = await cli("enqueue", "-", "--batch-size", "0", env=cli_env(services), stdin="")
    assert result.returncode == 2
    assert "--batch-size" in result.stderr


async def test_enqueue_under_a_taken_job_id_exits_1_and_names_the_id(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """The same prefix for the same URLs is a no-op; for other URLs the id is taken: exit 1."""
    prefix = f"taken-{uuid.uuid4().hex[:8]}"
    env = cli_env(services)
    first = await cli(
        "enqueue", "-", "--job-id-prefix", prefix, env=env, stdin="https://a.test/1\n"
    )
    again = await cli(
        "enqueue", "-", "--job-id-prefix", prefix, env=env, stdin="https://a.test/1\n"
    )
    other = await cli(
        "enqueue", "-", "--job-id-prefix", prefix, env=env, stdin="https://a.test/2\n"
    )
    assert (first.returncode, again.returncode) == (0, 0)
    assert first.stdout.split() == again.stdout.split() == [f"{prefix}-0"]
    assert other.returncode == 1
    assert f"job id '{prefix}-0' is already used by a different batch" in other.stderr
    assert "Traceback" not in other.stderr
    kept = json.loads(await redis.get(f"arq:job:{prefix}-0"))
    assert kept["k"]["urls"] == ["https://a.test/1"]  # the first batch is left as it was


@pytest.mark.integration
def test_demo_runs_end_to_end_in_a_reduced_size(tmp_path: Path) -> None:
    """`harvester demo` starts its own servers, lands every URL and prints a summary."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
    result = subprocess.run(
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
    assert result.returncode == 0, result.stdout + result.stderr
    assert "harvester demo summary" in result.stdout
    assert "URLs enqueued     301" in result.stdout
    assert "documents         294" in result.stdout
    assert "http_status     3" in result.stdout
    assert "invalid_url     1" in result.stdout
    assert "URLs/s" in result.stdout


async def test_health_reflects_the_workers_heartbeat(
    cli: InProcess, services: Services, redis: aioredis.Redis, pool: asyncpg.Pool, make_worker
) -> None:  # type: ignore[no-untyped-def]
    """`harvester health` exits 1 with no worker, 0 once a worker has written its heartbeat."""
    env = cli_env(services)
    before = await cli("health", env=env)
    assert before.returncode == 1
    assert "unhealthy" in before.stdout
    worker = make_worker()
    await worker.async_run()
    after = await cli("health", env=env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "healthy: " in after.stdout


async def test_a_database_url_with_a_bad_port_is_a_configuration_error(
    cli: InProcess, services: Services
) -> None:
    """DATABASE_URL=...:notaport exits 2 with one line naming the variable, no traceback."""
    env = cli_env(services, DATABASE_URL="postgresql://postgres@:notaport/db")
    result = await cli("migrate", env=env)
    assert result.returncode == 2, result.stderr
    assert "DATABASE_URL: the port 'notaport' is not a number" in result.stderr
    assert "Traceback" not in result.stderr


async def test_enqueue_refuses_a_batch_size_over_the_workers_limit(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """--batch-size above HARVESTER_MAX_BATCH_URLS is refused (exit 2, naming the setting)
    before anything is queued: a worker would refuse every such job."""
    env = cli_env(services, HARVESTER_MAX_BATCH_URLS="100")
    urls = "".join(f"https://api.example/{i}\n" for i in range(300))
    result = await cli("enqueue", "-", "--batch-size", "101", env=env, stdin=urls)
    assert result.returncode == 2, result.stdout
    assert result.stderr.startswith("harvester: --batch-size 101 is over HARVESTER_MAX_BATCH_URLS")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert await redis.zcard(TEST_QUEUE) == 0


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--source", "x" * 201, "'source' is longer than 200 characters"),
        ("--source", "a\x1b[31mb", "'source' contains a control character (U+001B"),
        ("--job-id-prefix", "poll-x", "reserved for harvester's own jobs"),
        ("--job-id-prefix", "a\nb", "control or format character (U+000A)"),
    ],
)
async def test_enqueue_refuses_what_the_payload_model_refuses(
    cli: InProcess,
    services: Services,
    redis: aioredis.Redis,
    option: str,
    value: str,
    says: str,
) -> None:
    """A source or job-id prefix no job may carry is refused (exit 2) before any URL is read,
    so even an empty file does not exit 0."""
    for stdin in ("https://api.example/a\n", ""):
        result = await cli("enqueue", "-", option, value, env=cli_env(services), stdin=stdin)
        assert result.returncode == 2, (stdin, result.stdout)
        assert result.stderr.startswith("harvester: "), result.stderr
        assert says in result.stderr
        assert "Traceback" not in result.stderr
    assert await redis.zcard(TEST_QUEUE) == 0


async def test_enqueue_splits_batches_whose_json_would_be_too_large(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """A batch whose job JSON would exceed HARVESTER_MAX_JOB_BYTES goes out as several smaller
    jobs, each one the worker accepts, with every URL once and in order."""
    limit = 64 * 1024
    urls = [f"https://api.example/{i}/" + "p" * 480 for i in range(500)]  # ~250 KB of URLs
    env = cli_env(services, HARVESTER_MAX_JOB_BYTES=str(limit))
    result = await cli("enqueue", "-", "--source", "big", env=env, stdin="\n".join(urls))
    assert result.returncode == 0, result.stderr
    job_ids = result.stdout.split()
    assert len(job_ids) >= 4
    accept = job_deserializer(limit)
    sent: list[str] = []
    for job_id in job_ids:
        raw = await redis.get(f"arq:job:{job_id}")
        assert len(raw) <= limit
        job = accept(raw)  # what the worker does first: it would refuse a larger job
        assert job["k"]["source"] == "big"
        sent += job["k"]["urls"]
    assert sent == urls


async def test_enqueue_warns_of_urls_that_will_land_as_invalid(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """A URL with a typo is enqueued (every URL of a job gets its outcome, here invalid_url),
    and enqueue says so on stderr at once, with how many and the first."""
    text = "https://api.example/ok\nhtps://api.example/typo\nhttp//api.example/other\n"
    out = await cli("enqueue", "-", env=cli_env(services), stdin=text)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.split()) == 1
    assert "warning: 2 URL(s) cannot be fetched as written" in out.stderr
    assert "'htps://api.example/typo', scheme 'htps' is not http or https" in out.stderr
