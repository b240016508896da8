"""Registered sources: management, and claiming due sources into scheduled jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from redis.exceptions import RedisError

from worker.engine.chunks import Chunk
from worker.engine.polling import SourceUpdate
from worker.engine.writes import write_chunk
from worker.queue.connection import redis_pool
from worker.scheduling import polls, sources
from worker.settings import Settings


async def test_add_list_update_enable_disable_remove(pool: asyncpg.Pool) -> None:
    """Sources are added once, updated on re-add, toggled and removed by id or URL."""
    a, b = "https://api.example/a", "https://api.example/b"
    assert await sources.add(pool, [a, b, a, " "], every=900, name="cat") == (2, 0)
    assert await sources.add(pool, [b], every=60, name="dog") == (0, 1)
    rows = {r.url: r for r in await sources.list_sources(pool)}
    assert (rows[a].interval_s, rows[a].name, rows[a].enabled) == (900, "cat", True)
    assert (rows[b].interval_s, rows[b].name) == (60, "dog")
    assert [r.url for r in await sources.list_sources(pool, name="dog")] == [b]

    assert await sources.set_enabled(pool, [str(rows[a].id), b], enabled=False) == 2
    assert not any(r.enabled for r in await sources.list_sources(pool))
    assert await sources.set_enabled(pool, [a], enabled=True) == 1
    assert await sources.remove(pool, [b, "https://api.example/none"]) == 1
    assert [r.url for r in await sources.list_sources(pool)] == [a]


async def _queued(arq_queue: ArqRedis) -> dict[str, dict[str, object]]:
    return {j.job_id or "": j.kwargs for j in await arq_queue.queued_jobs()}


async def test_due_sources_are_enqueued_in_scheduled_batches_by_name(
    pool: asyncpg.Pool, arq_queue: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    """Due sources go out as fetch_batch jobs with scheduled: true, one name per job, at most
    HARVESTER_SOURCES_BATCH_SIZE each; a plain SQL insert is due at once."""
    settings = make_settings(sources_batch_size=2)
    await sources.add(pool, [f"https://api.example/n{i}" for i in range(5)], every=60, name="n")
    await pool.execute(
        "INSERT INTO sources (url, interval_s) VALUES ('https://api.example/sql', 60)"
    )
    done = await polls.enqueue_due(pool, arq_queue, settings)
    assert (done.sources, len(done.jobs)) == (6, 4)
    queued = await _queued(arq_queue)
    assert set(queued) == set(done.jobs)
    assert all(kw["scheduled"] is True for kw in queued.values())
    by_source: dict[object, list[object]] = {}
    for kw in queued.values():
        assert len(kw["urls"]) <= 2  # type: ignore[arg-type]
        by_source.setdefault(kw.get("source"), []).extend(kw["urls"])  # type: ignore[arg-type]
    assert sorted(by_source["n"]) == sorted(f"https://api.example/n{i}" for i in range(5))  # type: ignore[type-var]
    assert by_source[None] == ["https://api.example/sql"]
    claimed = await pool.fetchval("SELECT count(*) FROM sources WHERE poll_job_id IS NOT NULL")
    assert claimed == 6
    again = await polls.enqueue_due(pool, arq_queue, settings)
    assert again.sources == 0  # claimed: not enqueued twice while the poll is pending


async def test_disabled_future_and_claimed_sources_are_not_enqueued(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings
) -> None:
    """Only enabled sources that are due and not claimed (or whose claim expired) go out."""
    await sources.add(pool, ["https://api.example/off"], every=60, name=None)
    await sources.set_enabled(pool, ["https://api.example/off"], enabled=False)
    await pool.execute(
        "INSERT INTO sources (url, next_due_at) VALUES ('https://api.example/later', now() + interval '1h')"
    )
    await pool.execute(
        "INSERT INTO sources (url, poll_job_id, claimed_until) VALUES "
        "('https://api.example/held', 'j1', now() + interval '1h'), "
        "('https://api.example/expired', 'j2', now() - interval '1s')"
    )
    done = await polls.enqueue_due(pool, arq_queue, settings)
    (urls,) = [kw["urls"] for kw in (await _queued(arq_queue)).values()]
    assert (done.sources, urls) == (1, ["https://api.example/expired"])


async def test_concurrent_runs_never_claim_a_source_twice(
    pool: asyncpg.Pool, arq_queue: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    """Eight cron runs at once (several workers) enqueue each due source exactly once."""
    settings = make_settings(sources_batch_size=7)
    urls = [f"https://api.example/c{i}" for i in range(300)]
    await sources.add(pool, urls, every=60, name="c")
    results = await asyncio.gather(
        *(polls.enqueue_due(pool, arq_queue, settings) for _ in range(8))
    )
    assert sum(r.sources for r in results) == 300
    enqueued = [u for kw in (await _queued(arq_queue)).values() for u in kw["urls"]]  # type: ignore[attr-defined]
    assert sorted(enqueued) == sorted(urls)


async def test_a_run_cut_short_leaves_its_sources_due(
    pool: asyncpg.Pool, arq_queue: ArqRedis, make_settings: Callable[..., Settings]
) -> None:
    """If enqueueing fails mid-run the claim rolls back, and the next run picks the sources up."""
    settings = make_settings()
    await sources.add(
        pool, ["https://api.example/r1", "https://api.example/r2"], every=60, name=None
    )
    dead = redis_pool(make_settings(redis_url="redis://127.0.0.1:1/0", redis_retry_time=0))
    try:
        with pytest.raises((RedisError, OSError)):
            await polls.enqueue_due(pool, dead, settings)
    finally:
        await dead.aclose()
    assert await pool.fetchval("SELECT count(*) FROM sources WHERE poll_job_id IS NULL") == 2
    assert (await polls.enqueue_due(pool, arq_queue, settings)).sources == 2


async def test_a_finished_poll_that_left_its_sources_claimed_is_enqueued_anew(
    pool: asyncpg.Pool, arq_queue: ArqRedis, settings: Settings
) -> None:
    """When the job a claim named has finished (its result kept) but the sources were never
    settled, the next claim gets a new job id instead of a silent no-op; while it is still
    queued, a re-claim reuses it."""
    await sources.add(pool, ["https://api.example/s1"], every=60, name=None)
    (first,) = (await polls.enqueue_due(pool, arq_queue, settings)).jobs
    await pool.execute("UPDATE sources SET poll_job_id = NULL, claimed_until = NULL")  # rolled back
    assert (await polls.enqueue_due(pool, arq_queue, settings)).jobs == (first,)
    assert len(await arq_queue.queued_jobs()) == 1

    # The job ran and finished without settling its source (e.g. its last try ran out of time).
    await arq_queue.zrem(settings.queue, first)
    await arq_queue.delete(job_key_prefix + first)
    await arq_queue.set(result_key_prefix + first, b"{}")
    await pool.execute("UPDATE sources SET claimed_until = now() - interval '1s'")
    (second,) = (await polls.enqueue_due(pool, arq_queue, settings)).jobs
    assert second == f"{first}-1"
    assert [j.job_id for j in await arq_queue.queued_jobs()] == [second]


async def test_a_poll_that_lost_its_claim_does_not_overwrite_the_state(
    pool: asyncpg.Pool,
) -> None:
    """A chunk of job A updates no source that job B has claimed since."""
    await pool.execute(
        "INSERT INTO sources (url, poll_job_id, claimed_until) VALUES "
        "('https://api.example/mine', 'A', now() + interval '1h'), "
        "('https://api.example/stolen', 'B', now() + interval '1h')"
    )
    ids = dict(await pool.fetch("SELECT url, id FROM sources"))  # type: ignore[arg-type]
    updates = [
        SourceUpdate(
            ids[u],
            u,
            "changed",
            True,
            200,
            None,
            None,
            None,
            b"h",
            True,
            0,
            60.0,
            None,
            (u, "GET", None),
        )
        for u in ("https://api.example/mine", "https://api.example/stolen")
    ]
    await write_chunk(pool, Chunk("A", None, [], [], updates), max_url_length=8192)
    rows = dict(await pool.fetch("SELECT url, poll_job_id FROM sources"))  # type: ignore[arg-type]
    assert rows == {"https://api.example/mine": None, "https://api.example/stolen": "B"}
