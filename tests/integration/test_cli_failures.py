"""``harvester failures list|replay``, run as a user runs them (in-process)."""

from __future__ import annotations

import json

import asyncpg
import redis.asyncio as aioredis

from tests.helpers import TEST_QUEUE, Services
from tests.helpers.cli import InProcess, cli_env, table_rows


async def _fail(pool: asyncpg.Pool, job_id: str, url: str, error: str, age_s: float) -> None:
    await pool.execute(
        """INSERT INTO fetch_failures (job_id, url, source, error, status, attempts, failed_at)
           VALUES ($1, $2, 'cli', $3, NULL, 2, now() - make_interval(secs => $4::float8))""",
        job_id,
        url,
        error,
        age_s,
    )


async def test_failures_list_prints_a_table_or_json_lines(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """`failures list` filters like list_failures; --json prints one object a line."""
    await _fail(pool, "job-a", "http://x/recent", "timeout", 60)
    await _fail(pool, "job-b", "http://x/old", "invalid_json", 7200)
    env = cli_env(services)

    as_json = await cli("failures", "list", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["url"], r["job_id"], r["error"], r["attempts"]) for r in rows] == [
        ("http://x/recent", "job-a", "timeout", 2),
        ("http://x/old", "job-b", "invalid_json", 2),
    ]
    assert rows[0]["replayed_by"] is None

    table = await cli("failures", "list", "--since", "30m", env=env)
    assert table.returncode == 0, table.stderr
    header, rows = table_rows(table.stdout)
    assert header == ["id", "failed", "error", "tries", "job", "url"]
    assert [r[1:] for r in rows] == [["1m ago", "timeout", "2", "job-a", "http://x/recent"]]

    bad = await cli("failures", "list", "--since", "yesterday-ish", env=env)
    assert bad.returncode == 2
    assert "--since" in bad.stderr


async def test_failures_replay_enqueues_and_prints_the_new_jobs(
    cli: InProcess, services: Services, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """`failures replay --dry-run` changes nothing; without it the job ids are printed."""
    await _fail(pool, "job-a", "http://x/1", "timeout", 60)
    await _fail(pool, "job-a", "http://x/2", "invalid_json", 60)
    env = cli_env(services)

    dry = await cli("failures", "replay", "--kind", "timeout", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1 URL(s) in 1 job(s)" in dry.stdout
    assert await pool.fetchval("SELECT count(*) FROM replays") == 0

    run = await cli("failures", "replay", "--kind", "timeout", env=env)
    assert run.returncode == 0, run.stderr
    job_ids = run.stdout.split()
    assert len(job_ids) == 1
    assert "replayed 1 URL(s) in 1 job(s)" in run.stderr
    payload = json.loads(await redis.get(f"arq:job:{job_ids[0]}"))
    assert payload["k"] == {"urls": ["http://x/1"], "source": "cli"}
    assert await redis.zscore(TEST_QUEUE, job_ids[0]) is not None
    linked = dict(await pool.fetch("SELECT url, replayed_by FROM fetch_failures"))
    assert linked == {"http://x/1": job_ids[0], "http://x/2": None}


async def test_failures_list_keeps_every_kind_given(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """`--kind timeout --kind connect` lists failures of both kinds, as `replay` does."""
    await _fail(pool, "job-a", "http://x/1", "timeout", 60)
    await _fail(pool, "job-a", "http://x/2", "connect", 50)
    await _fail(pool, "job-a", "http://x/3", "invalid_json", 40)
    result = await cli(
        "failures",
        "list",
        "--kind",
        "timeout",
        "--kind",
        "connect",
        "--json",
        env=cli_env(services),
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["url"] for line in result.stdout.splitlines()] == [
        "http://x/2",
        "http://x/1",
    ]


async def test_failures_list_fits_80_columns_and_keeps_long_values_whole(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """Within 80 columns a long job id and URL fold inside their columns, whole; the status of
    an http_status failure shows with its kind, and replayed rows are counted below."""
    job = "70cef8759b0f45d8afa87e252280e7a1"
    url = "https://catalog.example.org/api/v2/products?category=electronics&page=1&per_page=200"
    await _fail(pool, job, url, "timeout", 7200)
    await pool.execute(
        """INSERT INTO fetch_failures (job_id, url, error, status, attempts, replayed_by, failed_at)
           VALUES ('job-b', 'http://x/503', 'http_status', 503, 4, 'replay-1',
                   now() - interval '30 minutes')"""
    )
    listed = await cli("failures", "list", env=cli_env(services, COLUMNS="80"))
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    header, rows = table_rows(listed.stdout)
    assert header == ["id", "failed", "error", "tries", "job", "url"]
    assert [r[1:] for r in rows] == [
        ["30m ago", "http_status 503", "4", "job-b", "http://x/503"],
        ["2h ago", "timeout", "2", job, url],
    ]
    assert "1 of these already replayed" in listed.stdout


async def test_failures_list_shows_the_profile_name_when_a_row_has_one(
    cli: InProcess, services: Services, pool: asyncpg.Pool
) -> None:
    """A failure of an authenticated job shows its profile's name in an auth column (blank for
    the others) and in --json; the table still fits 80 columns."""
    await _fail(pool, "job-a", "http://x/plain", "timeout", 120)
    await _fail(pool, "job-b", "http://x/billing", "timeout", 60)
    await pool.execute("UPDATE fetch_failures SET auth = 'billing' WHERE job_id = 'job-b'")
    env = cli_env(services, COLUMNS="80")

    listed = await cli("failures", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    header, rows = table_rows(listed.stdout)
    assert header == ["id", "failed", "error", "tries", "auth", "job", "url"]
    assert [r[2:] for r in rows] == [
        ["timeout", "2", "billing", "job-b", "http://x/billing"],
        ["timeout", "2", "", "job-a", "http://x/plain"],
    ]
    as_json = await cli("failures", "list", "--json", env=env)
    assert [json.loads(line)["auth"] for line in as_json.stdout.splitlines()] == ["billing", None]
