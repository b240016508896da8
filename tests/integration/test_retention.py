"""Retention against a real Postgres: batched deletes, recent rows and sources' documents kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from jobs.retention import apply_retention
from tests.helpers import cron_ctx
from worker.scheduling.retention import delete_expired
from worker.settings import Settings

DAY = 86_400.0


async def _doc(pool: asyncpg.Pool, job_id: str, url: str, age_s: float) -> None:
    await pool.execute(
        """INSERT INTO documents (job_id, url, status, body, elapsed_ms, attempts, fetched_at)
           VALUES ($1, $2, 200, '{}'::jsonb, 1, 1, now() - make_interval(secs => $3::float8))""",
        job_id,
        url,
        age_s,
    )


async def _fail(pool: asyncpg.Pool, job_id: str, url: str, age_s: float) -> None:
    await pool.execute(
        """INSERT INTO fetch_failures (job_id, url, error, attempts, failed_at)
           VALUES ($1, $2, 'timeout', 1, now() - make_interval(secs => $3::float8))""",
        job_id,
        url,
        age_s,
    )


async def _urls(pool: asyncpg.Pool, table: str) -> set[str]:
    return {r["url"] for r in await pool.fetch(f"SELECT url FROM {table}")}


async def test_old_rows_go_in_batches_and_recent_rows_stay(pool: asyncpg.Pool) -> None:
    """Everything past the cutoff is deleted, several batches of batch_rows; the rest is kept."""
    for i in range(7):
        await _doc(pool, "old", f"http://x/doc/{i}", 10 * DAY)
    for i in range(5):
        await _fail(pool, "old", f"http://x/fail/{i}", 10 * DAY)
    await _doc(pool, "new", "http://x/doc/new", 1 * DAY)
    await _fail(pool, "new", "http://x/fail/new", 1 * DAY)

    # A single DELETE of batch_rows=2 could remove at most 2 rows: 7 and 5 need repeated batches.
    result = await delete_expired(pool, days=7, batch_rows=2)

    assert (result.documents, result.failures) == (7, 5)
    assert await _urls(pool, "documents") == {"http://x/doc/new"}
    assert await _urls(pool, "fetch_failures") == {"http://x/fail/new"}
    again = await delete_expired(pool, days=7, batch_rows=2)
    assert (again.documents, again.failures) == (0, 0)


async def test_a_sources_current_document_is_kept(pool: asyncpg.Pool) -> None:
    """The document a source points at survives; its older versions and other jobs' rows go."""
    url = "http://x/source"
    await pool.execute(
        "INSERT INTO sources (url, name, document_job_id) VALUES ($1, 'feed', 'poll-2')", url
    )
    await _doc(pool, "poll-1", url, 30 * DAY)  # an older version of the source's content
    await _doc(pool, "poll-2", url, 20 * DAY)  # the current one, old but still current
    await _doc(pool, "poll-2", "http://x/other", 20 * DAY)  # same job, another URL

    result = await delete_expired(pool, days=7, batch_rows=1)

    assert result.documents == 2
    rows = await pool.fetch("SELECT job_id, url FROM documents")
    assert [(r["job_id"], r["url"]) for r in rows] == [("poll-2", url)]


async def test_old_record_failures_and_finished_webhooks_go_pending_ones_stay(
    pool: asyncpg.Pool,
) -> None:
    """Record failures past the cutoff go, but not one whose document retention keeps (a
    source's current content: why its records are missing stays with it); a delivered or
    given-up webhook past it goes, a pending one stays however old, and recent rows stay."""
    url = "http://x/r"
    await pool.execute(
        "INSERT INTO sources (url, name, document_job_id) VALUES ($1, 'orders', 'kept')", url
    )
    await _doc(pool, "kept", url, 10 * DAY)
    await _doc(pool, "old", url, 10 * DAY)
    for job_id, age in (("old", 10 * DAY), ("kept", 10 * DAY), ("new", 1 * DAY)):
        await pool.execute(
            """INSERT INTO record_failures (job_id, url, source, kind, detail, created_at)
               VALUES ($1, $2, 'orders', 'records_no_key', 'no key',
                       now() - make_interval(secs => $3::float8))""",
            job_id,
            url,
            age,
        )
    for job_id, state, age in (
        ("delivered-old", "delivered", 10 * DAY),
        ("failed-old", "failed", 10 * DAY),
        ("pending-old", "pending", 10 * DAY),
        ("delivered-new", "delivered", 1 * DAY),
    ):
        await pool.execute(
            """INSERT INTO webhook_outbox (job_id, url, body, state, created_at)
               VALUES ($1, 'http://hook', '{}', $2, now() - make_interval(secs => $3::float8))""",
            job_id,
            state,
            age,
        )

    result = await delete_expired(pool, days=7, batch_rows=1)

    assert (result.documents, result.record_failures, result.webhooks) == (1, 1, 2)
    kept = await pool.fetchval("SELECT array_agg(job_id ORDER BY job_id) FROM record_failures")
    assert kept == ["kept", "new"]
    left = await pool.fetchval("SELECT array_agg(job_id ORDER BY job_id) FROM webhook_outbox")
    assert left == ["delivered-new", "pending-old"]


async def test_leases_left_behind_go_live_ones_stay(pool: asyncpg.Pool) -> None:
    """A job lease taken before the cutoff (its run could not drop it) goes; a recent one, a
    running job's, stays."""
    for job_id, age in (("left", 10 * DAY), ("running", 60.0)):
        await pool.execute(
            """INSERT INTO job_leases (job_id, run, epoch, owner, taken_at)
               VALUES ($1, gen_random_uuid(), 1, 'host:1',
                       now() - make_interval(secs => $2::float8))""",
            job_id,
            age,
        )
    result = await delete_expired(pool, days=7, batch_rows=1)
    assert result.leases == 1
    assert await pool.fetchval("SELECT array_agg(job_id) FROM job_leases") == ["running"]


async def test_arguments_are_checked(pool: asyncpg.Pool) -> None:
    """Nonsense arguments are refused before anything is deleted."""
    with pytest.raises(ValueError, match="days"):
        await delete_expired(pool, days=0, batch_rows=10)
    with pytest.raises(ValueError, match="batch_rows"):
        await delete_expired(pool, days=1, batch_rows=0)


async def test_cron_job_uses_the_settings_and_is_off_by_default(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """apply_retention does nothing without HARVESTER_RETENTION_DAYS, and deletes with it."""
    await _doc(pool, "old", "http://x/1", 3 * DAY)
    off: Any = cron_ctx("apply_retention", make_settings(), pool=pool)
    assert await apply_retention(off) == {"disabled": True}
    assert await pool.fetchval("SELECT count(*) FROM documents") == 1

    on: Any = cron_ctx(
        "apply_retention", make_settings(retention_days=2, retention_batch_rows=10), pool=pool
    )
    assert await apply_retention(on) == {
        "documents": 1,
        "failures": 0,
        "record_failures": 0,
        "webhooks": 0,
        "leases": 0,
    }
    assert await pool.fetchval("SELECT count(*) FROM documents") == 0
