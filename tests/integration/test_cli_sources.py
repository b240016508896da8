"""``harvester sources ...`` as an operator runs it (in-process), against real Postgres."""

from __future__ import annotations

import json

import asyncpg
import pytest

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
    assert header == ["id", "name", "every", "due", "polled", "outcome", "url", "sends"]
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


async def test_sources_add_refuses_a_name_no_poll_job_may_carry(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """A --source over 200 characters would fail every poll claim that holds it: refused with
    exit 2 and nothing registered."""
    result = await cli(
        "sources",
        "add",
        "https://api.example/ok",
        "--every",
        "15m",
        "--source",
        "s" * 201,
        env=cli_env(services),
    )
    assert result.returncode == 2, result.stderr
    assert "'source'" in result.stderr
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
    assert header == ["id", "name", "every", "due", "polled", "outcome", "url", "sends"]
    assert [(r[1], r[2], r[3], r[4], r[6]) for r in rows] == [
        ("catalog-eu", "90m", "now", "never", long_url),
        ("", "2d", "off", "never", "https://api.example/short"),
    ]


async def test_sources_add_stores_what_the_polls_send(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """--method, --json, --header (repeatable), --paginate, --since-param and --since-path are
    stored with the source, and `sources list` shows them briefly (all of them with --json)."""
    env = cli_env(services, COLUMNS="160")
    url = "https://api.example/search"
    added = await cli(
        "sources", "add", url, "--every", "5m", "--method", "post",
        "--json", '{"q": "shoes", "size": 50}',
        "--header", "Accept: application/vnd.x+json", "--header", "X-Tenant: t1",
        "--since-param", "since", "--since-path", "meta.cursor", "--paginate", "cursor:meta.next:c",
        env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    row = await pool.fetchrow(
        "SELECT method, body, headers, paginate, since_param, since_path, since_value FROM sources"
    )
    assert row is not None
    assert dict(row) == {
        "method": "POST",
        "body": {"q": "shoes", "size": 50},
        "headers": {"Accept": "application/vnd.x+json", "X-Tenant": "t1"},
        "paginate": {"cursor": {"path": "meta.next", "param": "c"}},
        "since_param": "since",
        "since_path": "meta.cursor",
        "since_value": None,
    }
    _, rows = table_rows((await cli("sources", "list", env=env)).stdout)
    assert rows[0][7] == "POST json, pages cursor:meta.next:c, 2 headers, since=(none yet)"
    (listed,) = [
        json.loads(x) for x in (await cli("sources", "list", "--json", env=env)).stdout.splitlines()
    ]
    assert (listed["method"], listed["body"], listed["since_path"]) == (
        "POST",
        {"q": "shoes", "size": 50},
        "meta.cursor",
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--header", "Authorization: Bearer x"], "header 'Authorization' is refused"),
        (["--header", "Cookie: a=b"], "header 'Cookie' is refused"),
        (["--header", "no colon"], "is not 'Name: value'"),
        (["--json", '{"q": 1}'], "'json' is a request body, which only POST, PUT and PATCH"),
        (["--method", "DELETE"], "'method' must be one of GET, POST, PUT, PATCH"),
        (["--method", "POST", "--json", "{nope"], "--json is not JSON"),
        (["--since-param", "since"], "give both --since-param and --since-path"),
        (["--since-path", "a.b"], "give both --since-param and --since-path"),
        (["--since-param", "a&b", "--since-path", "c"], "is not a query parameter name"),
        (["--since-param", "s", "--since-path", "a..b"], "--since-path is not a body path"),
        (["--paginate", "pages"], "--paginate 'pages': give link, json:PATH or cursor:PATH:PARAM"),
        (["--paginate", "cursor:meta.next"], "give link, json:PATH or cursor:PATH:PARAM"),
        (["--paginate", "link", "--max-pages", "1000000"], "over the limit of 1000"),
        (["--paginate", "json:a..b"], "'paginate.path'"),
    ],
)
async def test_sources_add_refuses_bad_request_flags(
    cli: InProcess, services: Services, pool: asyncpg.Pool, flags: list[str], message: str
) -> None:
    """Each bad flag is one line on stderr, exit 2, and nothing is stored."""
    bad = await cli(
        "sources", "add", "https://api.example/a", "--every", "1m", *flags, env=cli_env(services)
    )
    assert bad.returncode == 2, bad.stderr
    assert message in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert await pool.fetchval("SELECT count(*) FROM sources") == 0
