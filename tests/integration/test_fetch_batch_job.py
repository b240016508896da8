"""fetch_batch end to end: jobs enqueued from outside the worker, real arq, Redis, Postgres."""

from __future__ import annotations

import json
import pickle
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job, JobStatus
from arq.worker import Worker

from tests.helpers import TEST_QUEUE, Services
from tests.helpers.upstream import Upstream
from worker.errors import BadJobError
from worker.queue.client import JobIdTakenError, enqueue_urls
from worker.queue.connection import connect
from worker.queue.serialization import RemoteJobError, deserialize
from worker.settings import Settings


async def _plain_arq_client(services: Services) -> ArqRedis:
    """What another Python service would use: arq with stdlib JSON, nothing from harvester."""
    return await create_pool(
        RedisSettings.from_dsn(services.redis_url),
        job_serializer=lambda d: json.dumps(d).encode(),
        job_deserializer=json.loads,
        default_queue_name=TEST_QUEUE,
    )


async def _outcomes(pool: asyncpg.Pool, job_id: str) -> dict[str, tuple[str, int | None, int]]:
    """url -> (kind or 'document', status, attempts) for one job."""
    rows = await pool.fetch(
        """SELECT url, 'document' AS kind, status, attempts FROM documents WHERE job_id = $1
           UNION ALL
           SELECT url, error, status, attempts FROM fetch_failures WHERE job_id = $1""",
        job_id,
    )
    assert len(rows) == len({r["url"] for r in rows}), "a URL has two outcomes"
    return {r["url"]: (r["kind"], r["status"], r["attempts"]) for r in rows}


async def _result(services: Services, job_id: str) -> object:
    redis = await connect_settings(services)
    try:
        info = await Job(
            job_id, redis, _queue_name=TEST_QUEUE, _deserializer=deserialize
        ).result_info()
        assert info is not None
        return info.result
    finally:
        await redis.aclose()


async def connect_settings(services: Services) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(services.redis_url),
        job_deserializer=deserialize,
        default_queue_name=TEST_QUEUE,
    )


async def test_job_from_a_plain_arq_client_lands_every_url(
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
) -> None:
    """Documents for good URLs; the right failure kind for each bad one; a summary result."""
    u = upstream.url
    urls = {
        u("/json/a"): ("document", 200, 1),
        u("/gzip/b"): ("document", 200, 1),
        u("/flaky/c?fails=2&status=503"): ("document", 200, 3),
        u("/status/404"): ("http_status", 404, 1),
        u("/status/500"): ("http_status", 500, 3),
        u("/invalid-json"): ("invalid_json", 200, 1),
        u("/big?size=3000000"): ("too_large", 200, 1),
        "http//missing-colon": ("invalid_url", None, 0),
    }
    client = await _plain_arq_client(services)
    try:
        job = await client.enqueue_job(
            "fetch_batch", urls=list(urls), source="plain", _job_id="plain-1"
        )
    finally:
        await client.aclose()
    assert job is not None

    worker = make_worker(max_body_bytes=1_000_000)
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)

    assert await _outcomes(pool, "plain-1") == urls
    assert await pool.fetchval("SELECT count(*) FROM documents WHERE source = 'plain'") == 3
    result = await _result(services, "plain-1")
    assert isinstance(result, dict)
    assert result["documents"] == 3
    assert result["failures"] == {
        "http_status": 2,
        "invalid_json": 1,
        "invalid_url": 1,
        "too_large": 1,
    }
    assert result["urls"] == 8
    assert result["seconds"] > 0


async def test_raw_redis_commands_from_the_readme_enqueue_a_job(
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
) -> None:
    """The README's recipe for non-Python services, command for command, on the default queue."""
    url = upstream.url("/json/raw")
    now_ms = int(time.time() * 1000)
    payload = json.dumps(
        {
            "t": None,
            "f": "fetch_batch",
            "a": [],
            "k": {"urls": [url], "source": "catalog"},
            "et": now_ms,
        }
    )
    assert await redis.execute_command("EXISTS", "arq:result:catalog-0001") == 0
    async with redis.pipeline(transaction=True) as tx:  # MULTI ... EXEC
        tx.execute_command("SET", "arq:job:catalog-0001", payload, "PX", 86_400_000, "NX")
        tx.execute_command("ZADD", "arq:queue", "NX", now_ms, "catalog-0001")
        assert await tx.execute() == [True, 1]

    worker = make_worker(queue="arq:queue")
    await worker.async_run()
    assert worker.jobs_complete == 1
    assert await _outcomes(pool, "catalog-0001") == {url: ("document", 200, 1)}
    assert await redis.execute_command("EXISTS", "arq:result:catalog-0001") == 1


async def test_same_job_run_twice_leaves_the_same_rows(
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
    make_settings: Callable[..., Settings],
) -> None:
    """The job id is the idempotency key: a second run of job X adds no row."""
    urls = [upstream.url(f"/json/{i}") for i in range(20)] + [upstream.url("/status/404")]
    arq_redis = await connect(make_settings())
    try:
        for attempt in range(2):
            await redis.delete("arq:result:idem-0")  # let arq accept the same id again
            await enqueue_urls(arq_redis, urls, batch_size=100, job_id_prefix="idem")
            worker = make_worker()
            await worker.async_run()
            assert worker.jobs_complete == 1, attempt
            snapshot = await pool.fetch(
                "SELECT id, url, fetched_at FROM documents UNION ALL SELECT id, url, failed_at FROM fetch_failures ORDER BY 2"
            )
            if attempt == 0:
                first = snapshot
    finally:
        await arq_redis.aclose()
    assert snapshot == first
    assert len(first) == 21
    assert upstream.counts["/json/0"] == 1  # the second run did not even fetch again


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "x"}, "'urls' is required"),
        ({"urls": "http://a"}, "'urls' must be a list of strings"),
        ({"urls": ["http://a", 1]}, "must contain only strings"),
        ({"urls": [f"http://h/{i}" for i in range(6)]}, "over the limit of 5"),
        ({"urls": ["http://a"], "callback": "http://evil"}, "unknown field"),
    ],
)
async def test_bad_payloads_fail_cleanly_and_the_worker_goes_on(
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
    kwargs: dict,
    message: str,
) -> None:
    """A malformed job fails at once with a clear message; the next job still runs."""
    client = await _plain_arq_client(services)
    try:
        await client.enqueue_job("fetch_batch", _job_id="bad-1", **kwargs)
        await client.enqueue_job("fetch_batch", _job_id="good-1", urls=[upstream.url("/json/ok")])
    finally:
        await client.aclose()
    worker = make_worker(max_batch_urls=5)
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed, worker.jobs_retried) == (1, 1, 0)
    result = await _result(services, "bad-1")
    assert isinstance(result, RemoteJobError)
    assert result.error_type == "BadJobError"
    assert message in str(result)
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures WHERE job_id = 'bad-1'") == 0
    assert await _outcomes(pool, "good-1") == {upstream.url("/json/ok"): ("document", 200, 1)}


class _Payload:
    """Unpickling this would create a file: proof of whether pickle data was ever executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


async def test_pickle_payload_is_never_executed(
    services: Services,
    upstream: Upstream,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
    tmp_path: Path,
) -> None:
    """A pickle written straight into Redis fails as undecodable; its code never runs."""
    marker = tmp_path / "pwned"
    now_ms = int(time.time() * 1000)
    evil = pickle.dumps(
        {"t": 1, "f": "fetch_batch", "a": [], "k": {"urls": [_Payload(marker)]}, "et": now_ms}
    )
    await redis.set("arq:job:pickle-1", evil)
    await redis.zadd(TEST_QUEUE, {"pickle-1": now_ms})
    await redis.set(
        "arq:job:unknown-1",
        json.dumps({"t": 1, "f": "drop_tables", "a": [], "k": {}, "et": now_ms}),
    )
    await redis.zadd(TEST_QUEUE, {"unknown-1": now_ms})
    client = await _plain_arq_client(services)
    try:
        await client.enqueue_job("fetch_batch", _job_id="after-1", urls=[upstream.url("/json/ok")])
    finally:
        await client.aclose()

    worker = make_worker()
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 2)
    assert not marker.exists()
    pickled = await _result(services, "pickle-1")
    assert isinstance(pickled, RemoteJobError)
    assert "unable to deserialize job" in str(pickled)
    unknown = await _result(services, "unknown-1")
    assert "function 'drop_tables' not found" in str(unknown)


async def test_a_second_job_reuses_the_first_jobs_connections(
    upstream: Upstream,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
) -> None:
    """One session per process: job 2's requests go over connections job 1 opened."""
    await enqueue_urls(
        arq_queue, [upstream.url(f"/json/a{i}") for i in range(12)], job_id_prefix="first"
    )
    await enqueue_urls(
        arq_queue, [upstream.url(f"/json/b{i}") for i in range(12)], job_id_prefix="second"
    )
    worker = make_worker(concurrency=3, per_host=3, max_jobs=1)
    await worker.async_run()
    assert worker.jobs_complete == 2
    first = {h.peer_port for h in upstream.hits if h.path.startswith("/json/a")}
    second = {h.peer_port for h in upstream.hits if h.path.startswith("/json/b")}
    assert first
    assert second <= first


async def test_concurrency_is_bounded_across_concurrent_jobs(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
    arq_queue: ArqRedis,
) -> None:
    """Two jobs running at once share the process's limit: 3 in flight in all, not 3 each."""
    urls = [upstream.url(f"/slow/{i}?delay=0.05") for i in range(24)]
    job_ids = await enqueue_urls(arq_queue, urls, batch_size=12)
    worker = make_worker(concurrency=3, per_host=3, max_jobs=2)
    await worker.async_run()
    assert worker.jobs_complete == 2
    assert upstream.max_in_flight == 3
    for job_id in job_ids:
        assert await pool.fetchval("SELECT count(*) FROM documents WHERE job_id = $1", job_id) == 12


async def test_same_job_id_enqueued_twice_runs_once(
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_worker: Callable[..., Worker],
) -> None:
    """A second enqueue of a queued job id is refused; the job runs once."""
    client = await _plain_arq_client(services)
    try:
        first = await client.enqueue_job(
            "fetch_batch", _job_id="dup-1", urls=[upstream.url("/json/d")]
        )
        second = await client.enqueue_job(
            "fetch_batch", _job_id="dup-1", urls=[upstream.url("/json/other")]
        )
    finally:
        await client.aclose()
    assert first is not None
    assert second is None
    worker = make_worker()
    await worker.async_run()
    assert worker.jobs_complete == 1
    assert await _outcomes(pool, "dup-1") == {upstream.url("/json/d"): ("document", 200, 1)}
    assert upstream.counts["/json/other"] == 0


async def test_job_results_and_summary_are_json(
    services: Services,
    upstream: Upstream,
    redis: aioredis.Redis,
    make_worker: Callable[..., Worker],
) -> None:
    """The stored result is plain JSON any language can read."""
    client = await _plain_arq_client(services)
    try:
        job = await client.enqueue_job("fetch_batch", urls=[upstream.url("/json/x")])
        assert job is not None
        worker = make_worker()
        await worker.async_run()
        assert await job.status() == JobStatus.complete
        raw = await redis.get(f"arq:result:{job.job_id}")
    finally:
        await client.aclose()
    data = json.loads(raw)
    assert data["s"] is True
    assert data["r"]["documents"] == 1
    assert data["r"]["job_id"] == job.job_id
    assert uuid.UUID(job.job_id)


async def test_an_id_already_holding_the_same_batch_is_a_no_op_and_another_batch_is_refused(
    arq_queue: ArqRedis,
) -> None:
    """Enqueueing the same batch under the same ids again enqueues nothing and succeeds; a
    different batch under a taken id is refused, naming the id, with the ids enqueued
    before it."""
    first = await enqueue_urls(
        arq_queue, ["http://a/1", "http://a/2"], batch_size=1, job_id_prefix="same"
    )
    again = await enqueue_urls(
        arq_queue, ["http://a/1", "http://a/2"], batch_size=1, job_id_prefix="same"
    )
    assert first == again == ["same-0", "same-1"]
    assert len(await arq_queue.queued_jobs()) == 2
    with pytest.raises(
        JobIdTakenError, match="'same-1' is already used by a different batch"
    ) as caught:
        await enqueue_urls(
            arq_queue, ["http://a/1", "http://b/other"], batch_size=1, job_id_prefix="same"
        )
    assert caught.value.enqueued == ["same-0"]
    assert len(await arq_queue.queued_jobs()) == 2


@pytest.mark.parametrize("prefix", ["poll-squat", "replay-x", "cron:arq:queue:poll_sources"])
async def test_intakes_refuse_harvesters_own_job_ids(arq_queue: ArqRedis, prefix: str) -> None:
    """A caller cannot take the id of a source poll, a replay or a cron tick: refused before
    anything is enqueued."""
    with pytest.raises(BadJobError, match="reserved for harvester's own jobs"):
        await enqueue_urls(arq_queue, ["http://a/1"], job_id_prefix=prefix)
    assert await arq_queue.queued_jobs() == []
