"""Job leases against a real Postgres: a run that lost its job's lease lands nothing, a newer
run's take waits for a landing transaction of the older run to end, and a finished job whose
lease cannot be dropped still ends as a success."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.jobs import Job

from tests.helpers import wait_until
from tests.helpers.upstream import Upstream
from tests.helpers.workers import long_running, running
from worker.engine import leases
from worker.engine.chunks import Chunk
from worker.engine.outcomes import Failed, Fetched
from worker.engine.writes import write_chunk
from worker.errors import LeaseLostError
from worker.queue.client import enqueue_urls
from worker.queue.serialization import deserialize
from worker.settings import Settings

URL = "http://a/x"


def _doc(url: str = URL) -> Fetched:
    return Fetched(url=url, status=200, body=b'{"a": 1}', elapsed_ms=5, attempts=1)


def _fail(url: str = URL) -> Failed:
    return Failed(url=url, kind="timeout", detail="read timed out", status=None, attempts=3)


async def _counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM documents) AS d, (SELECT count(*) FROM fetch_failures) AS f"
    )
    assert row is not None
    return row["d"], row["f"]


async def test_each_take_starts_a_new_epoch_and_names_its_owner(pool: asyncpg.Pool) -> None:
    """Every run of a job takes the lease with the next epoch; the row names the last owner."""
    first = await leases.take(pool, "j", "host:1")
    second = await leases.take(pool, "j", "host:2")
    assert (first.epoch, second.epoch) == (1, 2)
    assert first.run != second.run
    row = await pool.fetchrow("SELECT epoch, owner, run FROM job_leases WHERE job_id = 'j'")
    assert row is not None
    assert (row["epoch"], row["owner"], row["run"]) == (2, "host:2", second.run)


async def test_a_run_that_lost_its_lease_lands_nothing(pool: asyncpg.Pool) -> None:
    """The older run's chunk (a failure for a URL the newer run landed as a document, which no
    unique key would stop) is refused whole; the newer run's chunks land."""
    old = await leases.take(pool, "j", "stalled:1")
    new = await leases.take(pool, "j", "live:2")
    await write_chunk(pool, Chunk("j", None, [_doc()], lease=new), max_url_length=8192)
    with pytest.raises(LeaseLostError, match="lost its lease"):
        await write_chunk(
            pool, Chunk("j", None, [_doc("http://a/y")], [_fail()], lease=old), max_url_length=8192
        )
    assert await _counts(pool) == (1, 0)


async def test_a_released_lease_fences_every_run(pool: asyncpg.Pool) -> None:
    """Once the run that ended the job released its lease, no other run of it lands a row."""
    old = await leases.take(pool, "j", "stalled:1")
    new = await leases.take(pool, "j", "live:2")
    await leases.release(pool, old)  # not the holder: a no-op
    assert await pool.fetchval("SELECT count(*) FROM job_leases") == 1
    await leases.release(pool, new)
    for lease in (old, new):
        with pytest.raises(LeaseLostError):
            await write_chunk(
                pool, Chunk("j", None, fails=[_fail()], lease=lease), max_url_length=8192
            )
    assert await _counts(pool) == (0, 0)


async def test_a_take_waits_for_the_older_runs_landing_transaction(pool: asyncpg.Pool) -> None:
    """A transaction that passed the older run's check commits before the newer run holds the
    lease: the take waits for it, so no write of the older run can follow the takeover."""
    old = await leases.take(pool, "j", "stalled:1")
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await leases.check(conn, old)
        take = asyncio.create_task(leases.take(pool, "j", "live:2"))

        async def waiting() -> bool:  # the take's backend waits for a lock
            return bool(await pool.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        await wait_until(waiting, timeout=10)
        assert not take.done()
        await tx.commit()
    new = await asyncio.wait_for(take, 10)
    assert new.epoch == 2


async def test_a_finished_job_whose_lease_release_hangs_still_succeeds(
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_settings: Callable[..., Settings],
    upstream: Upstream,
) -> None:
    """Postgres blocks the lease's delete (another transaction holds the row FOR KEY SHARE, which
    lets the job's landing through): the job gives up on the release, keeps the row and ends
    successfully, instead of running into arq's 10 s timeout and being recorded as failed."""
    settings = make_settings(job_timeout=10.0, request_timeout=4.0, retry_max_time=4.0)
    [job_id] = await enqueue_urls(
        arq_queue, [upstream.url("/json/r0"), upstream.url("/gate/r1")], job_id_prefix="release"
    )
    job = Job(job_id, arq_queue, _queue_name=settings.queue, _deserializer=deserialize)
    conn = await asyncpg.connect(settings.database_url)
    try:
        async with running(long_running(settings)):

            async def first_landed() -> bool:
                landed = await pool.fetchval("SELECT count(*) FROM documents") == 1
                return landed and upstream.in_flight == 1

            await wait_until(first_landed, timeout=20)
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM job_leases WHERE job_id = $1 FOR KEY SHARE", job_id
                )
                upstream.gate.set()

                async def finished() -> bool:
                    return await job.result_info() is not None

                await wait_until(finished, timeout=30)
    finally:
        await conn.close()
    info = await job.result_info()
    assert info is not None
    assert info.success, info.result
    assert info.job_try == 1
    assert await _counts(pool) == (2, 0)
    assert await pool.fetchval("SELECT count(*) FROM job_leases WHERE job_id = $1", job_id) == 1
