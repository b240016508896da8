"""Failure replay against a real Postgres and Redis: listing, claiming, generations, outbox."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from jobs.replay_failures import replay_failures as replay_cron
from tests.helpers import TEST_QUEUE, cron_ctx
from tests.helpers.locks import SECRET_ENV
from tests.helpers.upstream import Upstream
from worker.errors import TRANSIENT_KINDS, is_transient_failure
from worker.scheduling.replay import (
    OUTBOX_GRACE_S,
    list_failures,
    replay_failures,
)
from worker.settings import Settings


async def _fail(
    pool: asyncpg.Pool,
    job_id: str,
    url: str,
    *,
    error: str = "timeout",
    status: int | None = None,
    source: str | None = None,
    age_s: float = 3600.0,
    auth: str | None = None,
) -> int:
    """Insert one failure row that failed ``age_s`` seconds ago; return its id."""
    row_id: int = await pool.fetchval(
        """INSERT INTO fetch_failures
               (job_id, url, source, error, status, attempts, detail, failed_at, auth)
           VALUES ($1, $2, $3, $4, $5, 1, 'test', now() - make_interval(secs => $6::float8), $7)
           RETURNING id""",
        job_id,
        url,
        source,
        error,
        status,
        age_s,
        auth,
    )
    return row_id


async def _queued(redis: aioredis.Redis, job_id: str) -> dict[str, Any]:
    """The arq job's keyword arguments, checking it is in the test queue."""
    assert await redis.zscore(TEST_QUEUE, job_id) is not None, f"{job_id} is not queued"
    raw = await redis.get(f"arq:job:{job_id}")
    assert raw is not None
    payload = json.loads(raw)
    assert payload["f"] == "fetch_batch"
    kwargs: dict[str, Any] = payload["k"]
    return kwargs


async def _replayed_by(pool: asyncpg.Pool) -> dict[str, str | None]:
    rows = await pool.fetch("SELECT url, replayed_by FROM fetch_failures")
    return {r["url"]: r["replayed_by"] for r in rows}


async def test_list_filters_by_job_kind_and_time_newest_first(pool: asyncpg.Pool) -> None:
    """list_failures applies each filter and returns the newest rows first, up to the limit."""
    await _fail(pool, "a", "http://x/1", error="timeout", age_s=300)
    await _fail(pool, "a", "http://x/2", error="http_status", status=404, age_s=200)
    await _fail(pool, "b", "http://x/3", error="timeout", age_s=100)
    await _fail(pool, "b", "http://x/4", error="invalid_json", age_s=7200)

    everything = await list_failures(pool)
    assert [r.url for r in everything] == ["http://x/3", "http://x/2", "http://x/1", "http://x/4"]
    assert [r.url for r in await list_failures(pool, job_id="a")] == ["http://x/2", "http://x/1"]
    assert [r.url for r in await list_failures(pool, kinds=["timeout"])] == [
        "http://x/3",
        "http://x/1",
    ]
    since = datetime.now(UTC) - timedelta(seconds=250)
    assert [r.url for r in await list_failures(pool, since=since)] == ["http://x/3", "http://x/2"]
    assert [r.url for r in await list_failures(pool, job_id="b", kinds=["timeout"])] == [
        "http://x/3"
    ]
    assert len(await list_failures(pool, limit=1)) == 1
    row = everything[1]
    assert (row.job_id, row.error, row.status, row.attempts, row.replayed_by) == (
        "a",
        "http_status",
        404,
        1,
        None,
    )


async def test_list_refuses_a_naive_since(pool: asyncpg.Pool) -> None:
    """A datetime without a time zone is refused rather than guessed."""
    with pytest.raises(ValueError, match="timezone-aware"):
        await list_failures(pool, since=datetime(2026, 1, 1))


async def test_replay_enqueues_a_job_and_links_the_rows(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """A replay enqueues fetch_batch with the URLs (once each) and source, and links the rows."""
    await _fail(pool, "j0", "http://x/1", source="cat")
    await _fail(pool, "j1", "http://x/1", source="cat")  # the same URL failed in another job
    await _fail(pool, "j1", "http://x/2", source="cat", error="http_status", status=503)

    result = await replay_failures(pool, arq_queue, batch_size=100, limit=100)

    assert len(result.jobs) == 1
    assert result.urls == 2
    job_id = result.jobs[0]
    assert job_id.startswith("replay-")
    assert len(job_id) == len("replay-") + 16
    assert await _queued(redis, job_id) == {"urls": ["http://x/1", "http://x/2"], "source": "cat"}
    rows = await pool.fetch("SELECT replayed_by, replayed_at FROM fetch_failures")
    assert {r["replayed_by"] for r in rows} == {job_id}
    assert all(r["replayed_at"] is not None for r in rows)
    replay = await pool.fetchrow("SELECT * FROM replays WHERE job_id = $1", job_id)
    assert (replay["generation"], replay["urls"], replay["source"], replay["reason"]) == (
        1,
        2,
        "cat",
        "cli",
    )
    assert replay["enqueued_at"] is not None


async def test_replay_groups_by_source_and_splits_into_batches(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """Each job carries one source (or none) and at most batch_size URLs."""
    for i in range(5):
        await _fail(pool, "j", f"http://a/{i}", source="a", age_s=1000 - i)
    for i in range(2):
        await _fail(pool, "j", f"http://none/{i}", source=None, age_s=500 - i)

    result = await replay_failures(pool, arq_queue, batch_size=2, limit=100)

    payloads = [await _queued(redis, j) for j in result.jobs]
    assert [len(p["urls"]) for p in payloads] == [2, 2, 1, 2]
    assert [p.get("source") for p in payloads] == ["a", "a", "a", None]
    assert "source" not in payloads[3]  # omitted, not null
    assert sorted(u for p in payloads for u in p["urls"]) == sorted(
        [f"http://a/{i}" for i in range(5)] + ["http://none/0", "http://none/1"]
    )
    assert result.urls == 7


async def test_limit_bounds_the_rows_replayed(pool: asyncpg.Pool, arq_queue: ArqRedis) -> None:
    """No more than ``limit`` failure rows are taken, oldest first; the rest wait."""
    for i in range(5):
        await _fail(pool, "j", f"http://x/{i}", age_s=1000 - i)
    result = await replay_failures(pool, arq_queue, batch_size=2, limit=3)
    assert result.urls == 3
    linked = await _replayed_by(pool)
    assert sorted(u for u, by in linked.items() if by) == ["http://x/0", "http://x/1", "http://x/2"]


async def test_a_replayed_row_is_not_replayed_again(
    pool: asyncpg.Pool, arq_queue: ArqRedis
) -> None:
    """A second replay finds nothing: replayed_by marks the row as done."""
    await _fail(pool, "j", "http://x/1")
    first = await replay_failures(pool, arq_queue, batch_size=10, limit=10)
    second = await replay_failures(pool, arq_queue, batch_size=10, limit=10)
    assert len(first.jobs) == 1
    assert second.jobs == []
    assert second.urls == 0
    assert await pool.fetchval("SELECT count(*) FROM replays") == 1


async def test_concurrent_replays_never_take_a_row_twice(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """Replays running at once split the rows between them: every URL in exactly one job."""
    urls = [f"http://x/{i}" for i in range(300)]
    await pool.executemany(
        "INSERT INTO fetch_failures (job_id, url, error, attempts) VALUES ('j', $1, 'timeout', 1)",
        [(u,) for u in urls],
    )

    results = await asyncio.gather(
        *(replay_failures(pool, arq_queue, batch_size=7, limit=1000) for _ in range(4))
    )

    jobs = [j for r in results for j in r.jobs]
    assert len(jobs) == len(set(jobs))
    enqueued = [u for j in jobs for u in (await _queued(redis, j))["urls"]]
    assert sorted(enqueued) == sorted(urls)  # each URL exactly once
    assert sum(r.urls for r in results) == 300
    linked = await pool.fetch(
        "SELECT f.replayed_by, count(*) AS n, r.urls FROM fetch_failures f"
        " JOIN replays r ON r.job_id = f.replayed_by GROUP BY f.replayed_by, r.urls"
    )
    assert sorted(r["replayed_by"] for r in linked) == sorted(jobs)
    assert all(r["n"] == r["urls"] for r in linked)


async def test_cron_replays_transient_failures_at_most_replay_max_times(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    redis: aioredis.Redis,
    make_settings: Callable[..., Settings],
) -> None:
    """Each replay's own failures are replayed again until the generation reaches replay_max."""
    settings = make_settings(replay_after=60, replay_max=2)
    ctx: Any = cron_ctx("replay_failures", settings, pool=pool, redis=arq_queue)
    await _fail(pool, "original", "http://x/1", error="connect")

    generations = []
    failed_in = "original"
    for _ in range(3):
        summary = await replay_cron(ctx)
        if summary["jobs"] == 0:
            break
        job_id = await pool.fetchval(
            "SELECT replayed_by FROM fetch_failures WHERE job_id = $1", failed_in
        )
        generations.append(
            await pool.fetchval("SELECT generation FROM replays WHERE job_id = $1", job_id)
        )
        assert (await _queued(redis, job_id))["urls"] == ["http://x/1"]
        # The replay fails too, long enough ago for the next cron run.
        await _fail(pool, job_id, "http://x/1", error="connect")
        failed_in = job_id

    assert generations == [1, 2]
    assert await pool.fetchval("SELECT count(*) FROM replays WHERE reason = 'cron'") == 2
    last = await pool.fetchrow(
        "SELECT replayed_by FROM fetch_failures WHERE job_id = $1", failed_in
    )
    assert last["replayed_by"] is None


async def test_cron_is_off_when_replay_after_is_zero(
    pool: asyncpg.Pool, arq_queue: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    """HARVESTER_REPLAY_AFTER=0 turns the cron job into a no-op."""
    await _fail(pool, "j", "http://x/1")
    ctx: Any = cron_ctx(
        "replay_failures", make_settings(replay_after=0), pool=pool, redis=arq_queue
    )
    assert await replay_cron(ctx) == {"disabled": True}
    assert (await _replayed_by(pool)) == {"http://x/1": None}


async def test_older_than_leaves_recent_failures(pool: asyncpg.Pool, arq_queue: ArqRedis) -> None:
    """Only failures older than ``older_than`` seconds are replayed."""
    await _fail(pool, "j", "http://x/old", age_s=3600)
    await _fail(pool, "j", "http://x/new", age_s=10)
    await replay_failures(pool, arq_queue, older_than=600, batch_size=10, limit=10)
    linked = await _replayed_by(pool)
    assert linked["http://x/old"] is not None
    assert linked["http://x/new"] is None


async def test_transient_only_matches_the_transient_rule(
    pool: asyncpg.Pool, arq_queue: ArqRedis
) -> None:
    """Timeouts, connection errors, 408/425/429/500/502/503/504 are replayed; 404s, 501s and
    invalid JSON are not: the replay SQL and `worker.errors.is_transient_failure`, the one
    definition of transient, agree row for row."""
    cases: list[tuple[str, int | None]] = [(k, None) for k in TRANSIENT_KINDS]
    statuses = (400, 404, 408, 410, 425, 429, 499, 500, 501, 502, 503, 504, 505, 599)
    cases += [("http_status", s) for s in statuses]
    cases += [("invalid_json", 200), ("too_large", 200), ("blocked", None), ("content_type", 200)]
    for i, (error, status) in enumerate(cases):
        await _fail(pool, "j", f"http://x/{i}", error=error, status=status)

    await replay_failures(pool, arq_queue, transient_only=True, batch_size=100, limit=100)

    linked = await _replayed_by(pool)
    replayed = {cases[int(u.rsplit("/", 1)[1])] for u, by in linked.items() if by}
    expected = {(e, s) for e, s in cases if is_transient_failure(e, s)}
    assert replayed == expected
    assert ("http_status", 404) not in replayed
    assert ("http_status", 501) not in replayed
    assert ("http_status", 503) in replayed


async def test_kinds_job_and_since_filters(pool: asyncpg.Pool, arq_queue: ArqRedis) -> None:
    """--kind, --job and --since narrow what a replay takes."""
    await _fail(pool, "a", "http://x/a-timeout", error="timeout", age_s=100)
    await _fail(pool, "a", "http://x/a-json", error="invalid_json", age_s=100)
    await _fail(pool, "b", "http://x/b-timeout", error="timeout", age_s=100)
    await _fail(pool, "a", "http://x/a-old", error="timeout", age_s=90_000)
    since = datetime.now(UTC) - timedelta(hours=1)
    await replay_failures(
        pool, arq_queue, kinds=["timeout"], job_id="a", since=since, batch_size=10, limit=10
    )
    linked = await _replayed_by(pool)
    assert [u for u, by in linked.items() if by] == ["http://x/a-timeout"]


async def test_outbox_enqueues_a_replay_that_never_reached_redis(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """A committed replay left unenqueued (a crash) is enqueued by the next call, once."""
    await pool.execute(
        "INSERT INTO replays (job_id, generation, urls, source, reason, created_at)"
        " VALUES ('replay-orphan', 1, 2, 'cat', 'cron', now() - make_interval(secs => $1::float8)),"
        "        ('replay-fresh', 1, 1, NULL, 'cli', now())",
        OUTBOX_GRACE_S + 60,
    )
    for url in ("http://x/1", "http://x/2"):
        row_id = await _fail(pool, "j", url, source="cat")
        await pool.execute(
            "UPDATE fetch_failures SET replayed_by = 'replay-orphan', replayed_at = now()"
            " WHERE id = $1",
            row_id,
        )
    row_id = await _fail(pool, "k", "http://x/3")
    await pool.execute(
        "UPDATE fetch_failures SET replayed_by = 'replay-fresh' WHERE id = $1", row_id
    )

    result = await replay_failures(pool, arq_queue, batch_size=10, limit=10)

    assert result.recovered == 1
    assert result.jobs == []  # every failure was already claimed
    assert await _queued(redis, "replay-orphan") == {
        "urls": ["http://x/1", "http://x/2"],
        "source": "cat",
    }
    assert await redis.get("arq:job:replay-fresh") is None  # still within its owner's grace
    enqueued = dict(await pool.fetch("SELECT job_id, enqueued_at IS NOT NULL FROM replays"))
    assert enqueued == {"replay-orphan": True, "replay-fresh": False}
    again = await replay_failures(pool, arq_queue, batch_size=10, limit=10)
    assert again.recovered == 0


async def test_dry_run_changes_nothing(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """A dry run reports what it would replay and touches neither Postgres nor Redis."""
    for i in range(3):
        await _fail(pool, "j", f"http://x/{i}", source="a")
    await _fail(pool, "j", "http://x/b", source="b")
    result = await replay_failures(pool, arq_queue, batch_size=2, limit=10, dry_run=True)
    assert (result.jobs, result.urls, result.batches) == ([], 4, 3)
    assert set((await _replayed_by(pool)).values()) == {None}
    assert await pool.fetchval("SELECT count(*) FROM replays") == 0
    assert await redis.keys("arq:*") == []


async def test_a_replayed_url_lands_as_a_document_of_the_new_job(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    upstream: Upstream,
    make_worker: Callable[..., Worker],
) -> None:
    """End to end: the failed URL, replayed and run by a worker, lands under the replay's job id."""
    url = upstream.url("/json/replayed")
    await _fail(pool, "original", url, error="http_status", status=503, source="e2e")

    result = await replay_failures(pool, arq_queue, transient_only=True, batch_size=10, limit=10)
    worker = make_worker()
    await worker.main()

    assert worker.jobs_complete == 1
    assert worker.jobs_failed == 0
    doc = await pool.fetchrow(
        "SELECT job_id, source, status, body FROM documents WHERE url = $1", url
    )
    assert doc is not None
    assert (doc["job_id"], doc["source"], doc["status"]) == (result.jobs[0], "e2e", 200)
    link = await pool.fetchval(
        "SELECT d.id FROM fetch_failures f JOIN documents d ON d.job_id = f.replayed_by"
        " AND harvester_url_key(d.url) = harvester_url_key(f.url) WHERE f.job_id = 'original'"
    )
    assert link is not None


async def test_only_failures_of_gets_without_a_body_are_replayed(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """A POST's failure is not replayed (it was not stored whole); a GET's is, as a plain GET."""
    await _fail(pool, "p", "http://x/get")
    post = await _fail(pool, "p", "http://x/post")
    await pool.execute(
        "UPDATE fetch_failures SET method = 'POST', body_hash = sha256('{}'), request = '{}' "
        "WHERE id = $1",
        post,
    )
    result = await replay_failures(pool, arq_queue, batch_size=10, limit=10)
    [job_id] = result.jobs
    assert (await _queued(redis, job_id))["urls"] == ["http://x/get"]
    assert (await _replayed_by(pool))["http://x/post"] is None


async def test_a_replay_sends_the_credential_profile_of_the_failed_job(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    redis: aioredis.Redis,
    upstream: Upstream,
    credentials_file: Path,
    make_worker: Callable[..., Worker],
) -> None:
    """A bearer job's URL answers 503 the first time: its failure keeps the profile's name, the
    replay job carries ``auth``, and the URL, which the upstream serves only with the token,
    lands under the replay's id. The token is in no fetch_failures or replays row."""
    url = upstream.url("/api/bearer/replayed?fails=1&status=503")
    await arq_queue.enqueue_job("fetch_batch", urls=[url], auth="bearer", _job_id="original")
    first = make_worker(credentials=credentials_file, max_attempts=1)
    await first.main()
    failure = await pool.fetchrow("SELECT error, status, auth FROM fetch_failures")
    assert dict(failure) == {"error": "http_status", "status": 503, "auth": "bearer"}

    result = await replay_failures(pool, arq_queue, transient_only=True, batch_size=10, limit=10)
    [job_id] = result.jobs
    assert await _queued(redis, job_id) == {"urls": [url], "auth": "bearer"}
    assert await pool.fetchval("SELECT auth FROM replays WHERE job_id = $1", job_id) == "bearer"
    second = make_worker(credentials=credentials_file)
    await second.main()

    assert (second.jobs_complete, second.jobs_failed) == (1, 0)
    doc = await pool.fetchrow("SELECT job_id, status FROM documents WHERE url = $1", url)
    assert doc is not None
    assert (doc["job_id"], doc["status"]) == (job_id, 200)
    assert upstream.passed["/api/bearer/replayed"] == 2  # both fetches carried the token
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 1  # the original only
    token = SECRET_ENV["TEST_BEARER_TOKEN"]
    for table in ("fetch_failures", "replays"):
        rows = await pool.fetch(f"SELECT x::text FROM {table} x")
        assert rows
        assert all(token not in r[0] for r in rows), table


async def test_failures_of_different_profiles_go_out_in_different_jobs(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """Failures of one source under two profiles and under none make three jobs, each with its
    own ``auth`` (none: omitted), recorded in replays.auth; a dry run counts three too."""
    await _fail(pool, "j", "http://x/a1", source="s", auth="billing", age_s=900)
    await _fail(pool, "j", "http://x/none", source="s", age_s=800)
    await _fail(pool, "j", "http://x/b", source="s", auth="maps", age_s=700)
    await _fail(pool, "j", "http://x/a2", source="s", auth="billing", age_s=600)

    dry = await replay_failures(pool, arq_queue, batch_size=10, limit=10, dry_run=True)
    assert (dry.batches, dry.urls) == (3, 4)
    result = await replay_failures(pool, arq_queue, batch_size=10, limit=10)

    payloads = [await _queued(redis, j) for j in result.jobs]
    assert payloads == [
        {"urls": ["http://x/a1", "http://x/a2"], "source": "s", "auth": "billing"},
        {"urls": ["http://x/none"], "source": "s"},
        {"urls": ["http://x/b"], "source": "s", "auth": "maps"},
    ]
    recorded = [
        await pool.fetchval("SELECT auth FROM replays WHERE job_id = $1", j) for j in result.jobs
    ]
    assert recorded == ["billing", None, "maps"]
    listed = {r.url: r.auth for r in await list_failures(pool)}
    assert listed["http://x/a1"] == "billing"
    assert listed["http://x/none"] is None


async def test_the_outbox_enqueues_a_replay_with_its_profile(
    pool: asyncpg.Pool, arq_queue: ArqRedis, redis: aioredis.Redis
) -> None:
    """A committed replay of an authenticated job that never reached Redis is enqueued by the
    next call with the profile its replays row recorded."""
    await pool.execute(
        "INSERT INTO replays (job_id, generation, urls, source, auth, reason, created_at)"
        " VALUES ('replay-orphan', 1, 1, NULL, 'billing', 'cron',"
        "         now() - make_interval(secs => $1::float8))",
        OUTBOX_GRACE_S + 60,
    )
    row_id = await _fail(pool, "j", "http://x/1", auth="billing")
    await pool.execute(
        "UPDATE fetch_failures SET replayed_by = 'replay-orphan', replayed_at = now()"
        " WHERE id = $1",
        row_id,
    )

    result = await replay_failures(pool, arq_queue, batch_size=10, limit=10)

    assert (result.recovered, result.jobs) == (1, [])
    assert await _queued(redis, "replay-orphan") == {"urls": ["http://x/1"], "auth": "billing"}


async def test_list_filters_by_host_whatever_the_port_userinfo_or_case(pool: asyncpg.Pool) -> None:
    """The dashboard's host filter matches a URL's host alone: not its port, its userinfo, its
    case, nor a host that merely starts or ends the same."""
    await _fail(pool, "h", "https://API.example.com:8443/a?x=1")
    await _fail(pool, "h", "http://user:pw@api.example.com/b")
    await _fail(pool, "h", "https://api.example.com#frag")
    await _fail(pool, "h", "https://api.example.com.evil.test/c")
    await _fail(pool, "h", "https://other.example/api.example.com")
    await _fail(pool, "h", "http://[::1]:8080/d")
    rows = await list_failures(pool, host="api.example.com")
    assert sorted(r.url for r in rows) == [
        "http://user:pw@api.example.com/b",
        "https://API.example.com:8443/a?x=1",
        "https://api.example.com#frag",
    ]
    assert [r.url for r in await list_failures(pool, host="[::1]")] == ["http://[::1]:8080/d"]
    assert await list_failures(pool, host="example.com") == []


async def test_replay_by_ids_takes_only_the_selected_rows(
    pool: asyncpg.Pool, arq_queue: ArqRedis
) -> None:
    """A selection (the dashboard's) replays those rows alone, as one job recorded with reason
    'api'; a selected row already replayed is not taken again."""
    first = await _fail(pool, "s", "http://x/one", age_s=100)
    await _fail(pool, "s", "http://x/two", age_s=100)
    third = await _fail(pool, "s", "http://x/three", age_s=100)
    result = await replay_failures(
        pool, arq_queue, ids=[first, third], reason="api", batch_size=10, limit=10
    )
    (job,) = result.jobs
    assert sorted((await _queued(arq_queue, job))["urls"]) == ["http://x/one", "http://x/three"]
    assert await pool.fetchval("SELECT reason FROM replays WHERE job_id = $1", job) == "api"
    linked = await _replayed_by(pool)
    assert linked == {"http://x/one": job, "http://x/two": None, "http://x/three": job}
    again = await replay_failures(
        pool, arq_queue, ids=[first], reason="api", batch_size=10, limit=10
    )
    assert again.jobs == []
