"""Credentials in URLs and in DATABASE_URL never reach logs or failure details in clear."""

from __future__ import annotations

import asyncpg
import pytest
import redis.asyncio as aioredis

from tests.conftest import Services
from tests.test_cli import _env, _harvester
from tests.upstream import Upstream

pytestmark = pytest.mark.integration

SECRETS = ("s3cret-pass", "tok-123456", "hunter2-db", "sig-abcdef")


async def test_secrets_stay_out_of_logs_and_failure_details(
    services: Services, upstream: Upstream, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """A worker run with secret-bearing URLs and DSN writes none of the secrets."""
    port = upstream.base.rsplit(":", 1)[1]
    urls = [
        f"http://127.0.0.1:{port}/status/404?api_key=tok-123456&page=2",
        f"http://alice:s3cret-pass@127.0.0.1:{port}/status/500",
        f"http://127.0.0.1:{port}/json/ok?X-Amz-Signature=sig-abcdef",
        "http://bob:s3cret-pass@[not-an-ip/x",
    ]
    # Postgres here trusts every local connection, so the password is accepted and ignored.
    db_url = services.database_url.replace(
        "postgresql://postgres@", "postgresql://postgres:hunter2-db@"
    )
    env = _env(services, DATABASE_URL=db_url, HARVESTER_LOG_LEVEL="DEBUG")
    enq = await _harvester(
        "enqueue", "-", "--source", "secrets", env=env, stdin="\n".join(urls) + "\n"
    )
    assert enq.returncode == 0, enq.stderr
    run = await _harvester("worker", "--burst", env=env)
    assert run.returncode == 0, run.stderr

    logs = run.stdout + run.stderr
    # arq logged the job with its first URL: it is there, redacted.
    assert "/status/404?api_key=***" in logs
    for secret in SECRETS:
        assert secret not in logs, secret
    details = [r["detail"] for r in await pool.fetch("SELECT detail FROM fetch_failures")]
    assert len(details) == 3
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
