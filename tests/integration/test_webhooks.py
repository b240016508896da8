"""Completion webhooks end to end: jobs in a real worker, the outbox in Postgres, deliveries to
a local receiver through the process's guarded session, and ``harvester webhooks``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers import Services, wait_until
from tests.helpers.cli import InProcess, cli_env
from tests.helpers.upstream import Hit, Upstream
from tests.helpers.workers import long_running, running
from worker import logs as logs_module
from worker.engine import outbox, pipeline
from worker.engine.fetch import Fetcher
from worker.engine.requests import Request
from worker.engine.session import create_session
from worker.logs import KeyValueFormatter
from worker.queue.client import enqueue_batch
from worker.queue.payload import make_batch
from worker.scheduling import polls
from worker.settings import Settings

SECRET = "whsec-test-0123456789abcdef"
OLD_SECRET = "whsec-old-0123456789abcdef"


def verify(hit: Hit, *secrets: str) -> bool:
    """The receiver's check (the one docs/results.md shows): a v1 by each secret matches."""
    fields = [p.split("=", 1) for p in hit.headers["Harvester-Signature"].split(",")]
    t = next(v for k, v in fields if k == "t")
    sent = {v for k, v in fields if k == "v1"}
    signed = f"{t}.".encode() + hit.body
    want = {hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets}
    return want <= sent


async def _enqueue(queue: ArqRedis, job_id: str, **fields: Any) -> None:
    await enqueue_batch(queue, make_batch(**fields), job_id=job_id)


async def _row(pool: asyncpg.Pool, job_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT * FROM webhook_outbox WHERE job_id = $1", job_id)


async def _state_is(pool: asyncpg.Pool, job_id: str, state: str) -> bool:
    row = await _row(pool, job_id)
    return row is not None and row["state"] == state


async def test_receiver_failing_twice_gets_one_signed_delivery(
    make_settings: Callable[..., Settings],
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    cli: InProcess,
) -> None:
    """Two 503s, then a 200: three attempts with one delivery id, each signed by both secrets
    while one is rotated, one accepted; the body counts the job's outcomes."""
    settings = make_settings(
        webhook_secret=SECRET, webhook_secret_previous=OLD_SECRET, job_retry_delay=0
    )
    hook = upstream.url("/flaky/hook?fails=2&status=503")
    urls = [upstream.url("/json/a"), upstream.url("/status/404")]
    await _enqueue(arq_queue, "wh-1", urls=urls, source="cat", notify_url=hook)
    async with running(long_running(settings)):
        await wait_until(lambda: _state_is(pool, "wh-1", "delivered"), timeout=20)
    hits = upstream.hits_for("/flaky/hook")
    assert len(hits) == 3
    assert [h.method for h in hits] == ["POST"] * 3
    assert len({h.headers["Harvester-Delivery"] for h in hits}) == 1
    assert all(verify(h, SECRET, OLD_SECRET) for h in hits)
    assert not verify(hits[0], "whsec-wrong-0123456789abcdef")
    body = orjson.loads(hits[-1].body)
    assert {k: v for k, v in body.items() if k != "finished_at"} == {
        "job_id": "wh-1",
        "source": "cat",
        "status": "complete",
        "documents": 1,
        "failures": {"http_status": 1},
        "urls": 2,
    }
    row = await _row(pool, "wh-1")
    assert row is not None
    assert (row["attempts"], row["last_status"]) == (3, 200)
    assert str(row["delivery_id"]) == hits[0].headers["Harvester-Delivery"]
    assert all(SECRET not in h.headers.values() and SECRET.encode() not in h.body for h in hits)

    out = await cli("webhooks", "list", "--json", env=cli_env(services))
    listed = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert [(r["job_id"], r["state"], r["attempts"]) for r in listed] == [("wh-1", "delivered", 3)]


async def test_given_up_delivery_is_listed_and_redelivered(
    make_settings: Callable[..., Settings],
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    cli: InProcess,
) -> None:
    """A receiver that keeps failing past HARVESTER_WEBHOOK_MAX_AGE: failed, shown by
    ``webhooks list --failed``; ``redeliver --failed`` sends it again, with the same id."""
    # Old enough to be given up after a few tries (the outbox is looked at once a second).
    settings = make_settings(webhook_secret=SECRET, job_retry_delay=0, webhook_max_age=3)
    hook = upstream.url("/flaky/down?fails=1000&status=500")
    await _enqueue(arq_queue, "wh-2", urls=[upstream.url("/json/a")], notify_url=hook)
    async with running(long_running(settings)):
        await wait_until(lambda: _state_is(pool, "wh-2", "failed"), timeout=20)
        out = await cli("webhooks", "list", "--failed", "--json", env=cli_env(services))
        (listed,) = [orjson.loads(line) for line in out.stdout.splitlines()]
        assert (listed["job_id"], listed["last_status"]) == ("wh-2", 500)
        tries = len(upstream.hits_for("/flaky/down"))
        assert tries >= 2
        shown = await cli("webhooks", "list", "--failed", env=cli_env(services))
        assert "wh-2" in shown.stdout
        assert "HTTP 500" in shown.stdout
        neither = await cli("webhooks", "redeliver", env=cli_env(services))
        assert neither.returncode == 2
        assert "give delivery ids" in neither.stderr
        out = await cli("webhooks", "redeliver", "--failed", env=cli_env(services))
        assert "1 webhook(s) due again" in out.stderr
        await wait_until(lambda: _more_hits(upstream, "/flaky/down", tries), timeout=10)
    hits = upstream.hits_for("/flaky/down")
    assert len({h.headers["Harvester-Delivery"] for h in hits}) == 1


async def _more_hits(upstream: Upstream, prefix: str, than: int) -> bool:
    return len(upstream.hits_for(prefix)) > than


@pytest.mark.parametrize("allowed", ["127.0.0.0/8", ""])
async def test_redirecting_or_forbidden_receiver_is_refused(
    allowed: str,
    make_settings: Callable[..., Settings],
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
) -> None:
    """A notify_url that redirects is not followed (the target never hears of the job); one
    on a network the SSRF guard forbids is given up at once, never reached."""
    settings = make_settings(
        webhook_secret=SECRET, job_retry_delay=0, webhook_max_age=1, allowed_networks=allowed
    )
    target = upstream.url("/echo/target")
    hook = upstream.url(f"/redirect-as/307?location={target}")
    await _enqueue(arq_queue, "wh-3", urls=[upstream.url("/json/a")], notify_url=hook)
    async with running(long_running(settings)):
        await wait_until(lambda: _state_is(pool, "wh-3", "failed"), timeout=20)
    row = await _row(pool, "wh-3")
    assert row is not None
    assert upstream.hits_for("/echo/target") == []
    if allowed:
        assert row["last_status"] == 307
    else:
        assert upstream.hits_for("/redirect-as") == []
        assert row["attempts"] == 1
        assert "not allowed" in row["last_error"]


async def test_job_whose_rows_landed_before_a_crash_still_gets_its_webhook(
    make_settings: Callable[..., Settings],
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """Every row landed by a run that died before the job's end: the next run finds nothing to
    fetch, completes, and writes the outbox row with the whole job's counts."""
    settings = make_settings(webhook_secret=SECRET)
    urls = [upstream.url(f"/json/{i}") for i in range(5)] + [upstream.url("/status/404")]
    session = create_session(settings)
    try:
        run = pipeline.Batch(job_id="wh-4", requests=[Request(u) for u in urls], source=None)
        await pipeline.run(run, fetcher=Fetcher(session, settings), pool=pool, settings=settings)
    finally:
        await session.close()
    assert await _row(pool, "wh-4") is None  # the "crash": the run never ended the job
    fetched = len(upstream.hits)
    await _enqueue(arq_queue, "wh-4", urls=urls, notify_url=upstream.url("/echo/hook"))
    worker = make_worker(webhook_secret=SECRET)
    await worker.async_run()
    assert worker.jobs_complete == 1
    assert len(upstream.hits) == fetched  # nothing fetched again
    row = await _row(pool, "wh-4")
    assert row is not None
    body = orjson.loads(row["body"])
    assert (body["documents"], body["failures"], body["urls"]) == (5, {"http_status": 1}, 6)
    # Ending the finished job again (a run that lost the race) adds no second row.
    await outbox.finish(pool, outbox.Finished("wh-4", None, "complete", 6, "http://x/"), None)
    assert await pool.fetchval("SELECT count(*) FROM webhook_outbox") == 1


async def test_listen_sees_each_finished_job(
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """``LISTEN harvester`` gets each job's id when it completes, with or without a webhook."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(services.database_url)
    try:
        await conn.add_listener("harvester", lambda *args: heard.put_nowait(args[3]))
        await _enqueue(arq_queue, "ln-1", urls=[upstream.url("/json/a")])
        await make_worker().async_run()
        async with asyncio.timeout(10):
            assert await heard.get() == "ln-1"
    finally:
        await conn.close()


async def test_notify_url_without_a_secret_is_refused_by_the_worker(
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """A job with notify_url reaching a worker without HARVESTER_WEBHOOK_SECRET is rejected
    whole: nothing fetched, no outbox row, the reason in the job's result."""
    await _enqueue(
        arq_queue, "ns-1", urls=[upstream.url("/json/a")], notify_url=upstream.url("/echo/h")
    )
    worker = make_worker()
    await worker.async_run()
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 1)
    assert upstream.hits == []
    assert await pool.fetchval("SELECT count(*) FROM webhook_outbox") == 0


async def test_the_secret_stays_out_of_logs_redis_and_postgres(
    make_settings: Callable[..., Settings],
    upstream: Upstream,
    pool: asyncpg.Pool,
    redis: aioredis.Redis,
    arq_queue: ArqRedis,
) -> None:
    """After a delivery that failed once (logged) and then landed, the secret is nowhere: not in
    any log line, Redis key or value, or outbox column."""
    settings = make_settings(webhook_secret=SECRET, job_retry_delay=0, log_level="DEBUG")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    hook = upstream.url("/flaky/s?fails=1&status=500")
    try:
        await _enqueue(arq_queue, "sec-1", urls=[upstream.url("/json/a")], notify_url=hook)
        async with running(long_running(settings)):
            await wait_until(lambda: _state_is(pool, "sec-1", "delivered"), timeout=20)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert "webhook.retry" in stream.getvalue()
    assert SECRET not in stream.getvalue()
    for key in await redis.keys("*"):
        assert SECRET.encode() not in key
        if await redis.type(key) == b"string":
            assert SECRET.encode() not in (await redis.get(key) or b"")
    dump = await pool.fetchval("SELECT string_agg(t::text, '') FROM webhook_outbox AS t")
    assert dump
    assert SECRET not in dump
    assert SECRET not in logs_module.redact(f"echoed {SECRET}")  # registered with the scrubber


async def test_enqueue_takes_notify_url_only_with_a_webhook_secret(
    services: Services, pool: asyncpg.Pool, arq_queue: ArqRedis, cli: InProcess
) -> None:
    """``harvester enqueue --notify-url`` without HARVESTER_WEBHOOK_SECRET exits non-zero with
    one sentence and enqueues nothing; with it each job carries the URL."""
    args = ("enqueue", "-", "--notify-url", "https://hooks.example.com/h")
    out = await cli(*args, env=cli_env(services), stdin="https://a.example/x\n")
    assert out.returncode != 0
    assert "'notify_url' needs HARVESTER_WEBHOOK_SECRET" in out.stderr
    assert "Traceback" not in out.stderr
    assert await arq_queue.queued_jobs() == []
    env = cli_env(services, HARVESTER_WEBHOOK_SECRET=SECRET)
    out = await cli(*args, env=env, stdin="https://a.example/x\n")
    assert out.returncode == 0, out.stderr
    (job,) = await arq_queue.queued_jobs()
    assert job.kwargs["notify_url"] == "https://hooks.example.com/h"


async def test_a_source_with_notify_url_gets_a_signed_webhook_for_its_poll(
    make_settings: Callable[..., Settings],
    services: Services,
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    cli: InProcess,
) -> None:
    """``harvester sources add --notify-url`` is refused without a secret (nothing registered)
    and stored with one; the source's poll job carries it, and the poll's end is delivered,
    signed, naming the source."""
    url = upstream.url("/json/polled")
    hook = upstream.url("/echo/source-hook")
    args = ("sources", "add", url, "--every", "1h", "--source", "feed", "--notify-url", hook)
    out = await cli(*args, env=cli_env(services))
    assert out.returncode != 0
    assert "'notify_url' needs HARVESTER_WEBHOOK_SECRET" in out.stderr
    assert "Traceback" not in out.stderr
    assert await pool.fetchval("SELECT count(*) FROM sources") == 0

    env = cli_env(services, HARVESTER_WEBHOOK_SECRET=SECRET)
    out = await cli(*args, env=env)
    assert out.returncode == 0, out.stderr
    out = await cli("sources", "list", "--json", env=env)
    assert orjson.loads(out.stdout)["notify_url"] == hook

    settings = make_settings(webhook_secret=SECRET)
    await pool.execute("UPDATE sources SET next_due_at = now()")
    enqueued = await polls.enqueue_due(pool, arq_queue, settings)
    (job_id,) = enqueued.jobs
    (job,) = await arq_queue.queued_jobs()
    assert job.kwargs["notify_url"] == hook
    async with running(long_running(settings)):
        await wait_until(lambda: _state_is(pool, job_id, "delivered"), timeout=20)
    (hit,) = upstream.hits_for("/echo/source-hook")
    assert verify(hit, SECRET)
    body = orjson.loads(hit.body)
    assert (body["job_id"], body["source"], body["status"]) == (job_id, "feed", "complete")
    assert (body["documents"], body["urls"]) == (1, 1)
