"""Credentials in URLs and in DATABASE_URL, and the secrets of credential profiles, never reach
logs, failure details, Redis, Postgres, status, metrics or API answers in clear."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import Services
from tests.helpers.cli import InProcess, cli_env, harvester
from tests.helpers.locks import PROFILE_TYPES, SECRET_ENV
from tests.helpers.upstream import Upstream
from worker import logs as logs_module
from worker.devtools.embedded import free_port
from worker.logs import KeyValueFormatter
from worker.ops.api import create_app, serve
from worker.settings import Settings

SECRETS = (
    "s3cret-pass",
    "tok-123456",
    "hunter2-db",
    "sig-abcdef",
    "averyveryverylongpasswordthatgoespastarqs80characterargumentcut",
    "tail-after-at",
    "jwt-eyJhbGci",
    "code-4f2a9",
    "sid-77aa",
)


async def test_secrets_stay_out_of_logs_and_failure_details(
    services: Services, upstream: Upstream, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """A worker run with secret-bearing URLs and DSN writes none of the secrets."""
    port = upstream.base.rsplit(":", 1)[1]
    urls = [
        # First, and long enough that arq's start line would cut it before the "@" that marks
        # the userinfo (arq logs the arguments cut to 80 characters).
        f"http://carol:averyveryverylongpasswordthatgoespastarqs80characterargumentcut@127.0.0.1:{port}/status/404",
        f"http://127.0.0.1:{port}/status/404?api_key=tok-123456&page=2",
        f"http://alice:s3cret-pass@127.0.0.1:{port}/status/500",
        f"http://127.0.0.1:{port}/json/ok?X-Amz-Signature=sig-abcdef",
        "http://bob:s3cret-pass@[not-an-ip/x",
        f"http://dave:p@ss-tail-after-at@127.0.0.1:{port}/status/404",
        f"http://127.0.0.1:{port}/status/404?jwt=jwt-eyJhbGci&code=code-4f2a9&sid=sid-77aa",
    ]
    # Postgres here trusts every local connection, so the password is accepted and ignored.
    db_url = services.database_url.replace(
        "postgresql://postgres@", "postgresql://postgres:hunter2-db@"
    )
    env = cli_env(services, DATABASE_URL=db_url, HARVESTER_LOG_LEVEL="DEBUG")
    enq = await harvester(
        "enqueue", "-", "--source", "secrets", env=env, stdin="\n".join(urls) + "\n"
    )
    assert enq.returncode == 0, enq.stderr
    run = await harvester("worker", "--burst", env=env)
    assert run.returncode == 0, run.stderr

    logs = run.stdout + run.stderr
    # The job's start is logged (by harvester, with counts) and its failures' details are in
    # the log at DEBUG; none carries a secret.
    assert "job.started" in logs
    assert "urls=7" in logs
    for secret in SECRETS:
        # A leak cut short is still a leak: look for the start of each secret.
        assert secret[:10] not in logs, secret
    details = [r["detail"] for r in await pool.fetch("SELECT detail FROM fetch_failures")]
    assert len(details) == 6
    for secret in SECRETS:
        assert all(secret not in d for d in details), secret
    # The url column keeps each URL exactly as enqueued, so callers can join and replay.
    stored = {
        r["url"]
        for r in await pool.fetch(
            "SELECT url FROM fetch_failures UNION ALL SELECT url FROM documents"
        )
    }
    assert stored == set(urls)


async def _redis_text(redis: aioredis.Redis) -> str:
    """Every key of the Redis database and every value under it, as text."""
    parts: list[str] = []
    async for key in redis.scan_iter(count=1000):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            value: object = await redis.get(key)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "set":
            value = await redis.smembers(key)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


async def _postgres_text(pool: asyncpg.Pool) -> str:
    """Every row of every table of harvester's schema, as text."""
    tables = await pool.fetch(
        "SELECT quote_ident(table_name) AS t FROM information_schema.tables "
        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    assert len(tables) >= 4
    rows = []
    for t in tables:
        rows += [r[0] for r in await pool.fetch(f"SELECT x::text FROM {t['t']} x")]
    return "\n".join(rows)


@contextlib.contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    """Everything logged meanwhile, at DEBUG, as harvester's formatter writes it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


Sweep = Callable[[], Awaitable[dict[str, str]]]


@pytest.fixture
def sweep(
    services: Services,
    upstream: Upstream,
    credentials_file: Path,
    arq_queue: ArqRedis,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
    make_settings: Callable[..., Settings],
    cli: InProcess,
) -> Sweep:
    """A run using every profile type, and the text of every place harvester writes to."""

    async def run() -> dict[str, str]:
        """Run a job per profile type (a URL that lands, and one whose server echoes the credential
        it got in its reason phrase), then read back every place harvester writes to."""
        job_ids = [f"sweep-{kind}" for kind in PROFILE_TYPES]
        for kind, job_id in zip(PROFILE_TYPES, job_ids, strict=True):
            urls = [upstream.url(f"/api/{kind}/ok"), upstream.url(f"/echo-auth/{kind}")]
            await arq_queue.enqueue_job("fetch_batch", urls=urls, auth=kind, _job_id=job_id)
        metrics_port = free_port()
        with _captured_logs() as logs:
            worker = make_worker(credentials=credentials_file, metrics_port=metrics_port)
            await worker.main()
            assert worker.jobs_complete == len(job_ids)
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as r:
                    metrics = await r.text()
                app = create_app(make_settings(credentials=credentials_file))
                api = []
                async with serve(app, "127.0.0.1", 0) as port:
                    for job_id in job_ids:
                        async with session.get(f"http://127.0.0.1:{port}/batches/{job_id}") as r:
                            api.append(await r.text())
        env = cli_env(services)
        status = await cli("status", "--json", env=env)
        failures = await cli("failures", "list", "--json", env=env)
        # The failures keep their profile's name, and a replay of them records it (replays.auth)
        # and enqueues it: the sweep below reads those columns and jobs too.
        replay = await cli("failures", "replay", env=env)
        assert replay.returncode == 0, replay.stderr
        profiles = await pool.fetch(
            "SELECT DISTINCT f.auth, r.auth FROM fetch_failures f"
            " JOIN replays r ON r.job_id = f.replayed_by"
        )
        assert sorted(tuple(r) for r in profiles) == sorted((k, k) for k in PROFILE_TYPES)
        details = [r["detail"] for r in await pool.fetch("SELECT detail FROM fetch_failures")]
        assert len(details) == len(job_ids)
        assert await pool.fetchval("SELECT count(*) FROM documents") == len(job_ids)
        return {
            "redis": await _redis_text(redis),
            "postgres": await _postgres_text(pool),
            "failure details": "\n".join(details),
            "logs": logs.getvalue(),
            "status --json": status.stdout + status.stderr,
            "failures list": failures.stdout + failures.stderr,
            "metrics": metrics,
            "api": "\n".join(api),
        }

    return run


def _secret_values(upstream: Upstream) -> dict[str, str]:
    """Each secret of the run by name: the profiles' and every access token issued."""
    values = {name: value for name, value in SECRET_ENV.items() if name != "TEST_WRONG_SECRET"}
    values["basic header"] = aiohttp.encode_basic_auth("reports", SECRET_ENV["TEST_BASIC_PASSWORD"])
    assert upstream.tokens.issued, "the OAuth2 profile was not used"
    values.update({f"access token {i}": t for i, t in enumerate(upstream.tokens.issued)})
    return values


@pytest.mark.parametrize("redaction", [True, False], ids=["redacted", "teeth"])
async def test_no_secret_of_any_profile_type_lands_anywhere(
    redaction: bool, sweep: Sweep, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a run using every profile type, no profile secret and no access token is in
    Redis, any Postgres table, the worker's log, `status --json`, `failures list`, /metrics,
    the API's answers or a failure detail. With the scrubber off (the teeth) the secrets the
    careless upstream echoed are found in the details, the tables, the log and `failures list`:
    only the scrubbing keeps them out."""
    # A registry of this test's own: what earlier tests registered must not do the worker's job.
    registry = logs_module._Secrets()
    registry.enabled = redaction
    monkeypatch.setattr(logs_module, "secrets", registry)
    places = await sweep()
    secrets = _secret_values(upstream)
    found = {
        (name, place)
        for name, value in secrets.items()
        for place, text in places.items()
        if value in text
    }
    if redaction:
        assert found == set()
        assert "[redacted]" in places["failure details"]
        return
    echoed = set(secrets) - {"TEST_CLIENT_SECRET", "basic header"}  # never sent to an API
    for place in ("failure details", "postgres", "logs", "failures list"):
        assert {name for name, where in found if where == place} == echoed, place
