"""The `fetch_batch` job: fetch a batch of requests and land one outcome per request in Postgres."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from arq import Retry

from jobs.context import JobContext
from worker.engine import counters as metrics
from worker.engine import leases, outbox, pipeline, writer
from worker.engine.chunks import Chunk
from worker.engine.leases import JobLease
from worker.engine.outcomes import BatchSummary
from worker.errors import BadJobError, LeaseLostError, StoreError
from worker.logs import bound_job
from worker.queue import rejections
from worker.queue.payload import FetchBatch, parse_batch
from worker.scheduling import polls
from worker.settings import Settings

log = logging.getLogger("harvester.jobs")


def deadline_margin(settings: Settings) -> float:
    """Seconds kept back from arq's job timeout to land what was fetched and stop cleanly."""
    return min(15.0, settings.job_timeout * 0.2)


def hard_margin(settings: Settings) -> float:
    """The whole run, writes included, ends this long before arq's own timeout would fail the
    job: always after the pipeline's deadline, so that one normally wins."""
    return min(2.0, settings.job_timeout * 0.1)


def defer_delay(settings: Settings, job_try: int) -> float:
    """The wait before the next try of a deferred job (the job backoff, equal jitter)."""
    return settings.job_backoff.delay(job_try)


async def _abandon(
    ctx: JobContext, batch: FetchBatch, job_try: int, lease: JobLease
) -> dict[str, Any]:
    """Started too often (restarts, crashes, deferrals): close the job, but give every URL still
    without an outcome a failure row, so nothing is silently lost."""
    recorded = await pipeline.record_failures(
        ctx["pool"],
        Chunk(ctx["job_id"], batch.source, lease=lease, auth=batch.auth),
        batch.requests_of(),
        ctx["settings"],
        kind="abandoned",
        detail=f"job gave up after {job_try - 1} interrupted or deferred tries",
        paginated=batch.paginate is not None,
        on_landed=_on_landed(ctx),
    )
    await _finish(ctx, batch, "abandoned", lease)
    log.warning("job.abandoned", extra={"try": job_try, "recorded": recorded})
    metrics.record_job("abandoned")
    return {"job_id": ctx["job_id"], "abandoned": recorded, "try": job_try}


def _on_landed(ctx: JobContext) -> writer.OnLanded | None:
    """What tells the change stream of each chunk this job lands (None: the stream is off)."""
    events = ctx.get("events")
    return events.emit if events is not None else None


async def _finish(
    ctx: JobContext, batch: FetchBatch, status: outbox.Status, lease: JobLease
) -> None:
    """The job's end in Postgres: its webhook's outbox row (with a notify_url) and
    pg_notify('harvester', job_id), after its last rows landed (`worker.engine.outbox`)."""
    job = outbox.Finished(ctx["job_id"], batch.source, status, batch.size, batch.notify_url)
    await outbox.finish(ctx["pool"], job, lease)


async def _run(ctx: JobContext, batch: FetchBatch, started: float, lease: JobLease) -> BatchSummary:
    """The pipeline's run of this try: its deadline, priority and source states."""
    settings = ctx["settings"]
    job_try = ctx["job_try"]
    requests = batch.requests_of()
    urls = [r.url for r in requests]
    states = await polls.load_states(ctx["pool"], urls) if batch.scheduled else {}
    run = pipeline.Batch(
        job_id=ctx["job_id"],
        requests=requests,
        source=batch.source,
        deadline=started + settings.job_timeout - deadline_margin(settings),
        record_unfinished=job_try >= settings.job_tries,
        # Oldest job first when slots are scarce: jobs finish one after another instead of in
        # waves (see worker/engine/slots.py).
        priority=int(ctx["enqueue_time"].timestamp() * 1000),
        sources=states,
        profile=ctx["credentials"].get(batch.auth) if batch.auth is not None else None,
        paginate=batch.paginate.spec() if batch.paginate is not None else None,
        lease=lease,
        on_landed=_on_landed(ctx),
        records=batch.records.spec() if batch.records is not None else None,
    )
    return await pipeline.run(
        run, fetcher=ctx["fetcher"], pool=ctx["pool"], settings=settings, budget=ctx["budget"]
    )


def _owner(ctx: JobContext) -> str:
    # A worker started as `arq worker.app.WorkerSettings` (not harvester's) has no id of its own.
    return ctx.get("worker_id") or "arq"


def _lost(settings: Settings, job_try: int, exc: LeaseLostError) -> Retry:
    """This run's job went to another run while this one looked dead: stop, writing nothing
    more. The runtime leaves the job's Redis keys to the run that holds it now; should this run
    still hold them (the newer run came from a worker that records no holds), the job is not
    closed on this run's word but tried again later, skipping what landed."""
    log.warning("job.lost", extra={"try": job_try, "reason": str(exc)})
    metrics.record_job("lost")
    return Retry(defer=defer_delay(settings, job_try))


# The longest a finished job waits to drop its lease (less near arq's timeout: `_release`).
RELEASE_TIMEOUT_S = 5.0


async def _release(ctx: JobContext, lease: JobLease, hard_stop: float) -> None:
    """Drop the finished job's lease; one left behind only costs a row. A Postgres that hangs
    must not keep a finished job running into arq's timeout, which would record it as failed:
    the wait ends within `RELEASE_TIMEOUT_S`, and half the hard margin after ``hard_stop``."""
    loop = asyncio.get_running_loop()
    until = min(loop.time() + RELEASE_TIMEOUT_S, hard_stop + hard_margin(ctx["settings"]) / 2)
    try:
        async with asyncio.timeout_at(until):
            await leases.release(ctx["pool"], lease)
    except StoreError as exc:
        log.warning("job.lease_kept", extra={"reason": str(exc)})
    except TimeoutError:
        log.warning("job.lease_kept", extra={"reason": "Postgres did not answer in time"})


async def _parse(ctx: JobContext, args: Sequence[Any], kwargs: dict[str, Any]) -> FetchBatch:
    try:
        settings = ctx["settings"]
        batch = parse_batch(
            args,
            kwargs,
            max_urls=settings.max_batch_urls,
            job_id=ctx["job_id"],
            profiles=ctx["credentials"].profiles,
            max_pages=settings.max_pages,
            webhooks=settings.webhook_secret is not None,
        )
    except BadJobError as exc:
        log.error("job.rejected", extra={"reason": str(exc)})  # noqa: TRY400 - the reason is all
        metrics.record_job("rejected")
        await rejections.record(ctx["redis"], ctx["settings"].queue, ctx["job_id"])
        raise
    # Owned here rather than left to arq, whose start line cuts the arguments before any
    # redaction could see them: counts, never URLs.
    log.info(
        "job.started",
        extra={"try": ctx["job_try"], "urls": batch.size, "source": batch.source},
    )
    return batch


def _retry_later(settings: Settings, job_try: int, exc: Exception) -> Retry:
    """What a try that could not finish becomes: arq's Retry, after the job backoff, or at once
    for a continuation (the next try skips what already landed)."""
    if isinstance(exc, pipeline.DeadlineError):
        # arq would fail a job that hits its timeout, for good: stop just before, keep what
        # landed, and run again at once.
        log.warning(
            "job.continued", extra={"try": job_try, "landed": exc.landed, "left": exc.remaining}
        )
        metrics.record_job("continued")
        return Retry(defer=0)
    delay = defer_delay(settings, job_try)
    if isinstance(exc, StoreError):
        # Postgres is down or refusing writes: the whole job is worth another try later.
        log.warning(
            "job.deferred", extra={"reason": str(exc), "try": job_try, "defer_s": round(delay, 1)}
        )
        metrics.record_job("deferred")
    else:
        log.warning("job.overran", extra={"try": job_try, "defer_s": round(delay, 1)})
        metrics.record_job("overran")
    return Retry(defer=delay)


async def fetch_batch(ctx: JobContext, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """arq entry point; the payload is a `worker.queue.payload.FetchBatch`."""
    settings = ctx["settings"]
    job_try = ctx["job_try"]
    started = time.monotonic()
    with bound_job(ctx["job_id"]):
        batch = await _parse(ctx, args, kwargs)
        # arq fails a job that reaches its timeout for good. The pipeline stops fetching at its
        # own deadline; this bounds everything else too (writes to a Postgres that hangs rather
        # than refuses), turning an overrun into a deferral.
        hard_stop = asyncio.get_running_loop().time() + settings.job_timeout - hard_margin(settings)
        try:
            async with asyncio.timeout_at(hard_stop):
                # This run's lease: any run of this job still going elsewhere (its worker
                # looked dead and the job was taken over) lands nothing more from now on.
                lease = await leases.take(ctx["pool"], ctx["job_id"], _owner(ctx))
                result = await _attempt(ctx, batch, started, lease)
        except LeaseLostError as exc:
            raise _lost(settings, job_try, exc) from exc
        except (TimeoutError, pipeline.DeadlineError, StoreError) as exc:
            raise _retry_later(settings, job_try, exc) from exc
        await _release(ctx, lease, hard_stop)
        return result


async def _attempt(
    ctx: JobContext, batch: FetchBatch, started: float, lease: JobLease
) -> dict[str, Any]:
    """This try: the batch's run, or its end as `abandoned` once tried too often."""
    if ctx["job_try"] > ctx["settings"].job_tries:
        return await _abandon(ctx, batch, ctx["job_try"], lease)
    result = (await _run(ctx, batch, started, lease)).as_dict()
    await _finish(ctx, batch, "complete", lease)
    log.info("job.done", extra={k: v for k, v in result.items() if k != "job_id"})
    metrics.record_job("complete")
    return result
