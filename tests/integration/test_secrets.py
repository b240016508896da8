"""Credentials in URLs and in DATABASE_URL never reach logs or failure details in clear."""

from __future__ import annotations

import asyncpg
import redis.asyncio as aioredis

from tests.helpers import Services
from tests.helpers.cli import cli_env, harvester
from tests.helpers.upstream import Upstream

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
