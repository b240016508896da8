"""arq wiring: WorkerSettings, and the start-up and shutdown of the process's resources; the
worker class itself is `worker.runtime.worker.HarvesterWorker`.

Run with ``harvester worker`` or ``arq worker.app.WorkerSettings``. The settings class is built
on first access from the environment, so importing this module never reads it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack
from typing import Any, cast

from arq.cron import CronJob, cron
from arq.worker import func

from jobs.context import WorkerContext
from jobs.cron import cron_name
from jobs.fetch_batch import fetch_batch
from jobs.poll_sources import poll_sources
from jobs.replay_failures import replay_failures
from jobs.retention import apply_retention
from worker.engine import store
from worker.engine.budget import ByteBudget
from worker.engine.credentials import load_credentials
from worker.engine.fetch import Fetcher
from worker.engine.migrate import migrate
from worker.engine.session import create_session
from worker.engine.webhooks import Deliverer
from worker.logs import tame_arq_logs
from worker.ops import metrics as ops_metrics
from worker.queue.connection import redis_pool
from worker.queue.events import EventStream
from worker.queue.heartbeat import health_check_key
from worker.queue.hostlimits import RedisHostLimiter
from worker.queue.payload import JOB_NAME
from worker.queue.serialization import job_deserializer, serialize
from worker.runtime.worker import HarvesterWorker
from worker.settings import Settings, get_settings

log = logging.getLogger("harvester.worker")


async def startup(ctx: dict[str, Any]) -> None:
    """Create the one session and the one pool this process uses, on one exit stack."""
    settings: Settings = ctx.get("settings") or get_settings()
    # A bad credentials file stops start-up before anything is opened (ConfigError: one line).
    credentials = load_credentials(settings.credentials)
    stack = AsyncExitStack()
    try:
        session = create_session(settings)
        stack.push_async_callback(session.close)
        if settings.migrate_on_start:
            await migrate(settings.database_url)
        pool = await stack.enter_async_context(store.open_pool(settings))
        limiter = await _host_limiter(ctx, settings, stack)
        events = _event_stream(ctx, settings, stack)
        if settings.metrics_port is not None:
            await _serve_metrics(ctx, settings, stack)
        if settings.webhook_secret is not None:
            deliverer = Deliverer(session, pool, settings)
            deliverer.start()
            stack.push_async_callback(deliverer.stop)
    except BaseException:
        await stack.aclose()
        raise
    ctx.update(
        settings=settings,
        fetcher=Fetcher(session, settings, limiter=limiter),
        pool=pool,
        budget=ByteBudget(settings.buffer_bytes),
        credentials=credentials,
        exit_stack=stack,
    )
    if events is not None:
        ctx["events"] = events
    log.info(
        "worker.started",
        extra={
            "queue": settings.queue,
            "concurrency": settings.concurrency,
            "per_host": settings.per_host,
            "max_jobs": settings.max_jobs,
            "profiles": len(credentials.profiles),
            "metrics_port": settings.metrics_port,
            "loop": type(asyncio.get_running_loop()).__module__,
            "pid": os.getpid(),
        },
    )


async def _host_limiter(
    ctx: dict[str, Any], settings: Settings, stack: AsyncExitStack
) -> RedisHostLimiter | None:
    """The fleet's host limiter on the worker's Redis (policies read now, then kept fresh);
    None without one (a fetcher then paces with its own `HostPacer`)."""
    redis = ctx.get("redis")
    if redis is None:
        return None
    limiter = RedisHostLimiter(redis, settings)
    await limiter.start()
    stack.push_async_callback(limiter.stop)
    return limiter


def _event_stream(
    ctx: dict[str, Any], settings: Settings, stack: AsyncExitStack
) -> EventStream | None:
    """The change stream on the worker's Redis (`worker.queue.events`); None without Redis or
    with HARVESTER_EVENTS_STREAM empty."""
    redis = ctx.get("redis")
    if redis is None or not settings.events_stream:
        return None
    events = EventStream(redis, settings)
    events.start()
    stack.push_async_callback(events.stop)
    return events


async def _serve_metrics(ctx: dict[str, Any], settings: Settings, stack: AsyncExitStack) -> None:
    """The metrics endpoint: this process's own, or the host's shared one (see
    `worker.ops.metrics`) when ``harvester worker`` set up the shared directory."""
    assert settings.metrics_port is not None
    host, port = settings.metrics_host, settings.metrics_port
    shared = settings.metrics_shared_dir if ops_metrics.multiprocess_active() else None
    app = ops_metrics.metrics_app(ctx.get("redis"), settings.queue, shared)
    if shared is None:
        runner = await ops_metrics.serve(app, host, port)
        stack.push_async_callback(runner.cleanup)
        return
    server = ops_metrics.SharedMetricsServer(app, host, port, shared)
    await server.start()
    stack.push_async_callback(server.stop)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what startup opened (a no-op if startup failed before finishing)."""
    wctx = cast(WorkerContext, ctx)
    stack = wctx.get("exit_stack")
    if stack is not None:
        await stack.aclose()
    log.info("worker.stopped")


# arq's own limit on starts of a job is a little above ours: fetch_batch itself closes a job
# that has been started HARVESTER_JOB_TRIES times, recording its URLs, and arq's limit is only a
# backstop should that final run be interrupted too.
ARQ_EXTRA_TRIES = 3


REPLAY_EVERY_MIN = 5
RETENTION_MINUTE = 17  # once an hour, off the top of the hour


def _every(seconds: int) -> tuple[set[int] | None, set[int]]:
    """arq cron (minute, second) fields for "every ``seconds``" (a divisor of a minute, or
    whole minutes that divide an hour; see `Settings`)."""
    if seconds < 60:
        return None, set(range(0, 60, seconds))
    return set(range(0, 60, seconds // 60)), {0}


def cron_jobs(settings: Settings) -> list[CronJob]:
    """The scheduled tasks: source polling always; replay and retention when configured.

    arq's ``unique`` cron (the default) gives each tick one job id, ``<name>:<tick ms>``, so when
    several workers run only one of them runs a given tick. Names carry the queue
    (``cron:<queue>:poll_sources``): job ids are global to a Redis database, and two deployments
    sharing one must not take each other's ticks.
    """
    # arq locks every job for the longest timeout of any function (+10 s): a cron timeout above
    # the job timeout would make a killed worker's fetch_batch jobs wait that long to re-run.
    common: dict[str, Any] = {"timeout": settings.job_timeout, "max_tries": 1}
    minute, second = _every(settings.sources_poll_seconds)
    jobs = [
        cron(
            poll_sources,  # type: ignore[arg-type]  # arq types ctx as dict[Any, Any]
            name=cron_name(settings.queue, "poll_sources"),
            minute=minute,
            second=second,
            **common,
        )
    ]
    if settings.replay_after > 0:
        jobs.append(
            cron(
                replay_failures,  # type: ignore[arg-type]
                name=cron_name(settings.queue, "replay_failures"),
                minute=set(range(0, 60, REPLAY_EVERY_MIN)),
                second=30,
                **common,
            )
        )
    if settings.retention_days is not None:
        jobs.append(
            cron(
                apply_retention,  # type: ignore[arg-type]
                name=cron_name(settings.queue, "apply_retention"),
                minute=RETENTION_MINUTE,
                second=45,
                **common,
            )
        )
    return jobs


def worker_settings(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `arq.worker.Worker`, from our settings."""
    return {
        "functions": [
            func(
                fetch_batch,  # type: ignore[arg-type]  # arq types ctx as dict[Any, Any]
                name=JOB_NAME,
                timeout=settings.job_timeout,
                max_tries=settings.job_tries + ARQ_EXTRA_TRIES,
            )
        ],
        "cron_jobs": cron_jobs(settings),
        "queue_name": settings.queue,
        "redis_pool": redis_pool(settings),
        "job_completion_wait": settings.shutdown_grace,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "job_serializer": serialize,
        "job_deserializer": job_deserializer(settings.max_job_bytes),
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.poll_delay,
        "keep_result": settings.keep_result,
        "health_check_interval": settings.health_check_interval,
        "health_check_key": health_check_key(settings),
        "ctx": {"settings": settings},
    }


def create_worker(settings: Settings, **overrides: Any) -> HarvesterWorker:
    """A worker for ``settings``; ``overrides`` go to `arq.worker.Worker` (burst=True, ...)."""
    tame_arq_logs()
    kwargs = {**worker_settings(settings), **overrides}
    return HarvesterWorker(redis_retry_time=settings.redis_retry_time, **kwargs)


def __getattr__(name: str) -> Any:
    # `arq worker.app.WorkerSettings` looks the class up here; build it from the environment.
    if name == "WorkerSettings":
        tame_arq_logs()
        return type("WorkerSettings", (), worker_settings(get_settings()))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
