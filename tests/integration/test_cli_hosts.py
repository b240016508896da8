"""``harvester hosts ...`` as an operator runs it (in-process), against the session's Valkey."""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from tests.helpers import TEST_QUEUE, Services
from tests.helpers.cli import InProcess, cli_env, table_rows
from worker.engine.pacing import HostPolicy
from worker.queue.hostlimits import read_policies


async def test_hosts_commands_manage_the_policies(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """set (merging what each call gives), list (table and JSON, pauses too), clear."""
    env = cli_env(services, HARVESTER_HOST_RPS="2")
    done = await cli("hosts", "set", "API.Example.com", "--rps", "5", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("api.example.com: 5 requests/s")
    done = await cli("hosts", "set", "api.example.com", "--concurrency", "4", env=env)
    assert done.stdout.startswith("api.example.com: 5 requests/s, at most 4 in flight")
    assert (await cli("hosts", "set", "cdn.example.com", "--rps", "0", env=env)).returncode == 0
    assert await read_policies(redis, TEST_QUEUE) == {
        "api.example.com": HostPolicy(5.0, 4),
        "cdn.example.com": HostPolicy(0.0, None),
    }
    await redis.hset(f"{TEST_QUEUE}:hosts:paused", "slow.example.com", "99999999999999")

    listed = await cli("hosts", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "others: 2 requests/s" in listed.stdout
    header, rows = table_rows(listed.stdout)
    assert header == ["host", "rps", "in flight", "paused"]
    assert [r[:3] for r in rows] == [
        ["api.example.com", "5", "4"],
        ["cdn.example.com", "0", "-"],
        ["slow.example.com", "default", "-"],
    ]
    assert rows[2][3].endswith(" s")
    lines = (await cli("hosts", "list", "--json", env=env)).stdout.splitlines()
    first = json.loads(lines[0])
    assert first == {"host": "api.example.com", "rps": 5.0, "concurrency": 4, "paused_s": None}

    cleared = await cli("hosts", "clear", "api.example.com", env=env)
    assert cleared.returncode == 0
    assert cleared.stdout.startswith("cleared 1 host policy")
    assert (await cli("hosts", "clear", "api.example.com", env=env)).returncode == 1
    assert (await cli("hosts", "clear", "--all", env=env)).returncode == 0
    assert await read_policies(redis, TEST_QUEUE) == {}


async def test_hosts_refuses_bad_input_with_one_line(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """A URL for a host, no limit given, a negative, absurd or vanishing rate, clear without a
    host: exit 2, one line, nothing stored."""
    env = cli_env(services)
    for argv, said in [
        (("hosts", "set", "https://api.example.com/x", "--rps", "1"), "is not a host name"),
        (("hosts", "set", "api.example.com:8443", "--rps", "1"), "is not a host name"),
        (("hosts", "set", "api.example.com"), "needs --rps, --concurrency or both"),
        (("hosts", "set", "api.example.com", "--rps", "-1"), "must be 0 (not paced) or from"),
        (("hosts", "set", "api.example.com", "--rps", "nan"), "must be 0 (not paced) or from"),
        (("hosts", "set", "api.example.com", "--rps", "1e-15"), "or from 0.001 to 100000"),
        (("hosts", "set", "api.example.com", "--concurrency", "0"), "must be at least 1"),
        (("hosts", "clear"), "needs HOST... or --all"),
    ]:
        result = await cli(*argv, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        assert said in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr
        if "usage:" not in result.stderr:
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert await read_policies(redis, TEST_QUEUE) == {}


async def test_status_shows_the_host_policies(
    cli: InProcess, services: Services, redis: aioredis.Redis
) -> None:
    """`harvester status --json` has the default rate, the policies and the pauses; the screen
    has a hosts line."""
    env = cli_env(services, HARVESTER_HOST_RPS="3")
    assert (await cli("hosts", "set", "api.example.com", "--rps", "5", env=env)).returncode == 0
    status = json.loads((await cli("status", "--json", env=env)).stdout)
    assert status["hosts"] == {
        "default_rps": 3.0,
        "policies": {"api.example.com": {"rps": 5.0, "concurrency": None}},
        "paused": {},
    }
    screen = (await cli("status", env=env)).stdout
    assert "hosts (others 3/s): api.example.com 5/s" in screen
