"""Every expected problem is one line on stderr starting ``harvester:``, with the exit code of
docs/cli.md and no traceback: a stopped Redis, a stopped Postgres, an unmigrated database, a
missing file, a closed pipe, and URLs no server can serve (docs/troubleshooting.md)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.helpers import Services, closed_port, with_database, with_port
from tests.helpers.cli import InProcess, Result, cli_env, harvester
from tests.helpers.processes import kill_tree, stop_tree

# Commands that need Redis, and those that need Postgres (each as the user types it).
REDIS_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("health",),
    ("enqueue", "-"),
    ("failures", "replay"),
]
POSTGRES_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("migrate",),
    ("sources", "list"),
    ("sources", "add", "https://api.example/a", "--every", "15m"),
    ("sources", "enable", "1"),
    ("sources", "disable", "https://api.example/a"),
    ("sources", "remove", "1"),
    ("failures", "list"),
    ("failures", "replay"),
]
# A stopped Redis does not stop these: they never touch it.
POSTGRES_ONLY = [c for c in POSTGRES_COMMANDS if c not in REDIS_COMMANDS]


def one_line(result: Result) -> str:
    """The command's only stderr line, checked to start with ``harvester:``."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("harvester: "), result.stderr
    return lines[0]


@pytest.fixture
async def empty_database(services: Services) -> AsyncIterator[str]:
    """The URL of a new, empty database (never migrated) on the session's Postgres."""
    name = f"harvester_empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(services.database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.parametrize("argv", REDIS_COMMANDS, ids=" ".join)
async def test_a_stopped_redis_is_exit_3_at_once(
    cli: InProcess, services: Services, argv: tuple[str, ...]
) -> None:
    """With Redis stopped, a command that needs it says so in one line naming REDIS_URL
    (password hidden) and exits 3 within seconds, not after the worker's retry budget."""
    url = f"redis://:sekrit@127.0.0.1:{closed_port()}/0"
    started = time.monotonic()
    result = await cli(*argv, env=cli_env(services, REDIS_URL=url), stdin="https://a.example/\n")
    elapsed = time.monotonic() - started
    line = one_line(result)
    assert result.returncode == 3, result.stderr
    assert line.startswith(
        f"harvester: Redis is unavailable at redis://***@127.0.0.1:{url.rsplit(':', 1)[1]} "
        "(REDIS_URL): "
    ), line
    assert "sekrit" not in result.stderr
    assert elapsed < 15, elapsed  # HARVESTER_REDIS_RETRY_TIME (30 s) is the worker's, not ours


@pytest.mark.parametrize("argv", REDIS_COMMANDS, ids=" ".join)
async def test_sentinels_that_name_no_primary_are_exit_3_at_once(
    cli: InProcess, services: Services, argv: tuple[str, ...]
) -> None:
    """With no sentinel of a redis+sentinel:// REDIS_URL answering, a command says so in one
    line naming REDIS_URL and the service (passwords hidden) and exits 3 within seconds."""
    hosts = f"127.0.0.1:{closed_port()},127.0.0.1:{closed_port()}"
    url = f"redis+sentinel://:sekrit@{hosts}/svc/0?sentinel_password=sekrit2"
    started = time.monotonic()
    result = await cli(*argv, env=cli_env(services, REDIS_URL=url), stdin="https://a.example/\n")
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert one_line(result) == (
        f"harvester: Redis is unavailable at redis+sentinel://***@{hosts}/svc/0"
        "?sentinel_password=*** (REDIS_URL): no sentinel named a primary for 'svc' (are they "
        "up, is the name right?)"
    )
    assert "sekrit" not in result.stderr
    assert elapsed < 15, elapsed


@pytest.mark.parametrize("argv", POSTGRES_ONLY, ids=" ".join)
async def test_commands_that_do_not_use_redis_run_without_it(
    cli: InProcess, services: Services, pool: asyncpg.Pool, argv: tuple[str, ...]
) -> None:
    """sources, failures list and migrate never touch Redis: a stopped one does not stop them."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    result = await cli(*argv, env=cli_env(services, REDIS_URL=url))
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 1), result.stderr  # 1: enable/remove found nothing


@pytest.mark.parametrize("argv", POSTGRES_COMMANDS, ids=" ".join)
async def test_a_stopped_postgres_is_exit_3(
    cli: InProcess, services: Services, argv: tuple[str, ...]
) -> None:
    """With Postgres stopped, every command that uses it says so in one line naming
    DATABASE_URL without its password, and exits 3."""
    port = closed_port()
    url = with_port("postgresql://harvester:sekrit@db/harvester", port)
    result = await cli(*argv, env=cli_env(services, DATABASE_URL=url))
    line = one_line(result)
    assert result.returncode == 3, result.stderr
    assert line.startswith(
        f"harvester: Postgres is unavailable at postgresql://***@127.0.0.1:{port}/harvester "
        "(DATABASE_URL): "
    ), line
    assert "sekrit" not in result.stderr


@pytest.mark.parametrize("argv", [("worker", "--burst"), ("api", "--port", "{port}")], ids=" ".join)
async def test_a_stopped_postgres_stops_the_servers_with_exit_3(
    services: Services, argv: tuple[str, ...]
) -> None:
    """The worker and the API (run as processes) end with the same line and exit 3."""
    url = with_port("postgresql://harvester:sekrit@db/harvester", closed_port())
    argv = tuple(a.format(port=closed_port()) for a in argv)
    result = await harvester(*argv, env=cli_env(services, DATABASE_URL=url))
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("harvester: Postgres is unavailable at postgresql://***@"), last
    assert "sekrit" not in result.stderr


@pytest.mark.parametrize("argv", [("migrate",), ("sources", "list")], ids=" ".join)
async def test_a_database_that_does_not_exist_is_a_configuration_error(
    cli: InProcess, services: Services, argv: tuple[str, ...]
) -> None:
    """Postgres refusing the connection itself (no such database) is not an outage: exit 2,
    naming DATABASE_URL."""
    url = with_database(services.database_url, f"missing_{uuid.uuid4().hex[:8]}")
    line = one_line(result := await cli(*argv, env=cli_env(services, DATABASE_URL=url)))
    assert line.startswith("harvester: DATABASE_URL: Postgres at postgresql://***@"), line
    assert "does not exist" in line
    assert result.returncode == 2


UNMIGRATED_COMMANDS = [c for c in POSTGRES_COMMANDS if c != ("migrate",)]


@pytest.mark.parametrize("argv", UNMIGRATED_COMMANDS, ids=" ".join)
async def test_an_unmigrated_database_says_run_migrate(
    cli: InProcess, services: Services, empty_database: str, argv: tuple[str, ...]
) -> None:
    """A database without harvester's tables is not "Postgres is unavailable": every command
    says to run harvester migrate, and exits 2."""
    result = await cli(*argv, env=cli_env(services, DATABASE_URL=empty_database))
    line = one_line(result)
    assert line == "harvester: the database has no harvester tables yet: run harvester migrate"
    assert result.returncode == 2


@pytest.mark.parametrize(
    "argv",
    [("enqueue", "{missing}"), ("sources", "add", "--every", "15m", "--from-file", "{missing}")],
    ids=" ".join,
)
async def test_a_missing_file_is_exit_2(
    cli: InProcess, services: Services, tmp_path: Path, argv: tuple[str, ...]
) -> None:
    """A URL file that does not exist is named in one line, exit 2."""
    missing = str(tmp_path / "urls.txt")
    result = await cli(*(a.format(missing=missing) for a in argv), env=cli_env(services))
    assert one_line(result) == f"harvester: cannot read {missing}: No such file or directory"
    assert result.returncode == 2


async def test_a_file_that_is_not_text_is_exit_2(
    cli: InProcess, services: Services, tmp_path: Path
) -> None:
    """A URL file that is not UTF-8 text is named in one line, exit 2, and nothing is queued."""
    binary = tmp_path / "urls.bin"
    binary.write_bytes(b"https://a.example/\n\xff\xfe\x00\n")
    result = await cli("enqueue", str(binary), env=cli_env(services))
    assert one_line(result).startswith(f"harvester: cannot read {binary}: not UTF-8 text")
    assert result.returncode == 2


@pytest.mark.parametrize(
    ("variable", "url", "says"),
    [
        ("DATABASE_URL", "postgresql://p@127.0.0.1:99999/x", "the port '99999' is not a number"),
        ("DATABASE_URL", "postgresql://p@127.0.0.1:notaport/x", "the port 'notaport'"),
        ("REDIS_URL", "redis://127.0.0.1:6379/x", "the database number 'x' is not a number"),
        ("REDIS_URL", "redis+sentinel://127.0.0.1:26379", "a Sentinel URL names the service"),
        ("REDIS_URL", "redis+sentinel://127.0.0.1:x/svc/0", "the port 'x' is not a number"),
    ],
)
async def test_an_unreadable_url_is_a_configuration_error(
    cli: InProcess, services: Services, variable: str, url: str, says: str
) -> None:
    """A URL whose port or database cannot be read is refused before connecting: exit 2."""
    result = await cli("status", env=cli_env(services, **{variable: url}))
    line = one_line(result)
    assert line.startswith(f"harvester: invalid configuration: {variable}: {says}"), line
    assert result.returncode == 2


@pytest.mark.parametrize("argv", [("enqueue", "-"), ("health",), ("status",)], ids=" ".join)
async def test_a_redis_database_the_server_lacks_is_exit_2(
    cli: InProcess, services: Services, argv: tuple[str, ...]
) -> None:
    """REDIS_URL=redis://host:port/99 (Redis has 16 databases) is a configuration error."""
    url = services.redis_url.rsplit("/", 1)[0] + "/99"
    result = await cli(*argv, env=cli_env(services, REDIS_URL=url), stdin="https://a.example/\n")
    assert one_line(result).startswith("harvester: REDIS_URL: Redis has no database 99")
    assert result.returncode == 2


async def test_a_worker_on_a_redis_database_the_server_lacks_exits_2(services: Services) -> None:
    """The worker too: a configuration error at once (exit 2), not an outage ridden out."""
    url = services.redis_url.rsplit("/", 1)[0] + "/99"
    result = await harvester("worker", "--burst", env=cli_env(services, REDIS_URL=url))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("harvester: REDIS_URL: Redis has no database 99"), result.stderr


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("DATABASE_URL", "postgresql://p@127.0.0.1:5432/x?sslrootcert={missing}"),
        ("DATABASE_URL", "postgresql://p@127.0.0.1:5432/x?sslmode=verify-full&sslcert={missing}"),
        ("REDIS_URL", "rediss://127.0.0.1:6379/0?ssl_ca_certs={missing}"),
    ],
)
async def test_a_missing_tls_file_is_a_configuration_error(
    cli: InProcess, services: Services, tmp_path: Path, variable: str, url: str
) -> None:
    """A TLS file named in a URL that does not exist is refused: exit 2, naming the variable
    and the file."""
    missing = str(tmp_path / "ca.pem")
    env = cli_env(services, **{variable: url.format(missing=missing)})
    line = one_line(await cli("status", env=env))
    assert line.startswith(f"harvester: invalid configuration: {variable}: "), line
    assert f"{missing!r}" in line
    assert "does not exist" in line


def _first_line_then_close(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``harvester ARGV`` into a reader that takes one line and closes the pipe, as
    ``| head -1`` does; the exit code, that line and the command's stderr."""
    with subprocess.Popen(
        [sys.executable, "-m", "worker", *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            first = proc.stdout.readline()
            proc.stdout.close()  # the reader goes away
            err = proc.stderr.read()
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                kill_tree(proc.pid)
    return code, first.decode(), err.decode()


@pytest.mark.parametrize("argv", [["failures", "list", "--json", "--limit", "5000"]])
async def test_a_closed_pipe_ends_quietly(
    services: Services, pool: asyncpg.Pool, argv: list[str]
) -> None:
    """``--json | head -1``: the command stops when its reader goes, with exit 0 and nothing on
    stderr (no BrokenPipeError, no "Exception ignored")."""
    await pool.execute(
        """INSERT INTO fetch_failures (job_id, url, error, attempts)
           SELECT 'pipe', 'https://a.example/' || i || repeat('x', 200), 'timeout', 1
           FROM generate_series(1, 5000) AS i"""
    )
    code, first, err = await asyncio.to_thread(_first_line_then_close, argv, cli_env(services))
    assert first.startswith("{")
    assert err == ""
    assert code == 0


async def test_a_worker_without_redis_says_so_at_once_then_exits_3(services: Services) -> None:
    """The worker's first line, written while it still keeps trying, is ``redis.unavailable``
    with how long it will try (HARVESTER_REDIS_RETRY_TIME); it then exits 3 with one line."""
    env = cli_env(
        services,
        REDIS_URL=f"redis://:sekrit@127.0.0.1:{closed_port()}/0",
        HARVESTER_REDIS_RETRY_TIME="4",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "worker",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        still_trying = proc.returncode is None
        rest = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
        code = await asyncio.wait_for(proc.wait(), 60)
    finally:
        await stop_tree(proc)
    assert " WARNING redis.unavailable " in first, first + rest
    assert "retry_s=4" in first
    assert "url=redis://***@127.0.0.1:" in first
    assert still_trying
    assert code == 3, rest
    assert "Traceback" not in first + rest
    assert "sekrit" not in first + rest
    assert rest.strip().splitlines()[-1].startswith("harvester: Redis is unavailable at redis://")
