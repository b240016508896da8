"""``harvester sources ...`` as an operator runs it (in-process), against real Postgres."""

from __future__ import annotations

import json

import asyncpg

from tests.helpers import Services
from tests.helpers.cli import InProcess, cli_env, table_rows


async def test_sources_commands_manage_the_table(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """add (arguments and a file on stdin), list (table and JSON), disable, enable, remove."""
    env = cli_env(services)
    added = await cli(
        "sources",
        "add",
        "https://api.example/a",
        "--every",
        "15m",
        "--source",
        "cat",
        "--from-file",
        "-",
        env=env,
        stdin="# comment\nhttps://api.example/b\n\nhttps://api.example/a\n",
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "added 2, updated 0 source(s), every 15m"

    listed = await cli("sources", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    header, rows = table_rows(listed.stdout)
    assert header == ["id", "name", "every", "due", "polled", "outcome", "url"]
    assert [(r[1], r[2], r[4], r[6]) for r in rows] == [
        ("cat", "15m", "never", "https://api.example/a"),
        ("cat", "15m", "never", "https://api.example/b"),
    ]

    off = await cli("sources", "disable", "https://api.example/b", env=env)
    assert off.stdout.strip() == "disabled 1 source(s)"
    rows = [
        json.loads(x) for x in (await cli("sources", "list", "--json", env=env)).stdout.splitlines()
    ]
    assert {r["url"]: r["enabled"] for r in rows} == {
        "https://api.example/a": True,
        "https://api.example/b": False,
    }
    first_id = str(rows[0]["id"])
    assert (await cli("sources", "enable", "https://api.example/b", env=env)).returncode == 0
    gone = await cli("sources", "remove", first_id, env=env)
    assert gone.stdout.startswith("removed 1 source(s)")
    assert await pool.fetchval("SELECT array_agg(url) FROM sources") == ["https://api.example/b"]
    missing = await cli("sources", "remove", "https://api.example/zzz", env=env)
    assert missing.returncode == 1


async def test_sources_add_refuses_a_bad_interval(cli: InProcess, services: Services) -> None:
    """--every that is not a duration is a usage error naming the value."""
    bad = await cli(
        "sources", "add", "https://api.example/a", "--every", "soon", env=cli_env(services)
    )
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr


async def test_sources_add_refuses_urls_that_cannot_be_polled(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """ "not a url", ftp:// and file:// are refused with a message naming them and exit 2;
    nothing is registered, not even the good URL given with them."""
    env = cli_env(services)
    result = await cli(
        "sources",
        "add",
        "https://api.example/ok",
        "not a url",
        "ftp://x/y",
        "file:///etc/passwd",
        "--every",
        "15m",
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "3 URL(s) cannot be polled" in result.stderr
    assert "'ftp://x/y' scheme 'ftp' is not http or https" in result.stderr
    assert "Traceback" not in result.stderr
    assert await pool.fetchval("SELECT count(*) FROM sources") == 0


async def test_sources_list_fits_80_columns_and_keeps_long_urls_whole(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """The table is `harvester status`'s style within 80 columns: a long URL or name folds
    inside its own column (all of it still there), and no other cell is broken or cut."""
    long_url = "https://catalog.example.org/api/v2/products?category=electronics&per_page=200"
    env = cli_env(services, COLUMNS="80")
    await cli("sources", "add", long_url, "--every", "1h30m", "--source", "catalog-eu", env=env)
    await cli("sources", "add", "https://api.example/short", "--every", "2d", env=env)
    await cli("sources", "disable", "https://api.example/short", env=env)
    listed = await cli("sources", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    assert listed.stdout.startswith("sources")
    header, rows = table_rows(listed.stdout)
    assert header == ["id", "name", "every", "due", "polled", "outcome", "url"]
    assert [(r[1], r[2], r[3], r[4], r[6]) for r in rows] == [
        ("catalog-eu", "90m", "now", "never", long_url),
        ("", "2d", "off", "never", "https://api.example/short"),
    ]
