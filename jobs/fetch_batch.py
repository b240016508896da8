"""The `fetch_batch` job: fetch a batch of URLs and land one outcome per URL in Postgres."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from arq import Retry

from jobs.context import JobContext
from worker.engine import counters as metrics
from worker.engine import pipeline
from worker.errors import BadJobError, StoreError
from worker.logs import bound_job
from worker.queue.payload import parse_batch
from worker.scheduling import sources
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
    ctx: JobContext, urls: Sequence[str], source: str | None, job_try: int
) -> dict[str, Any]:
    """Started too often (restarts, crashes, deferrals): close the job, but give every URL still
    without an outcome a failure row, so nothing is silently lost."""
    recorded = await pipeline.record_failures(
        job_id=ctx["job_id"],
        urls=urls,
        source=source,
        pool=ctx["pool"],
        settings=ctx["settings"],
        kind="abandoned",
        detail=f"job gave up after {job_try - 1} interrupted or deferred tries",
    )
    log.warning("job.abandoned", extra={"try": job_try, "recorded": recorded})
    metrics.record_job("abandoned")
    return {"job_id": ctx["job_id"], "abandoned": recorded, "try": job_try}


async def fetch_batch(ctx: JobContext, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """arq entry point. Payload: ``urls: list[str]``, optional ``source: str`` and
    ``scheduled: bool`` (a poll of registered sources, as the poll_sources cron enqueues)."""
    settings = ctx["settings"]
    job_id = ctx["job_id"]
    job_try = ctx["job_try"]
    started = time.monotonic()
    with bound_job(job_id):
        try:
            batch = parse_batch(args, kwargs, max_urls=settings.max_batch_urls, job_id=job_id)
        except BadJobError as exc:
            log.error("job.rejected", extra={"reason": str(exc)})  # noqa: TRY400 - arq logs the trace
            metrics.record_job("rejected")
            raise
        # Owned here rather than left to arq, whose start line cuts the arguments before any
        # redaction could see them: counts, never URLs.
        log.info(
            "job.started",
            extra={"try": job_try, "urls": len(batch.urls), "source": batch.source},
        )
        loop = asyncio.get_running_loop()
        # arq fails a job that reaches its timeout for good. The pipeline stops fetching at its
        # own deadline; this bounds everything else too (writes to a Postgres that hangs rather
        # than refuses), turning an overrun into a deferral.
        hard_stop = loop.time() + settings.job_timeout - hard_margin(settings)
        try:
            async with asyncio.timeout_at(hard_stop):
                if job_try > settings.job_tries:
                    return await _abandon(ctx, batch.urls, batch.source, job_try)
                states = (
                    await sources.load_states(ctx["pool"], batch.urls) if batch.scheduled else None
                )
                summary = await pipeline.run(
                    job_id=job_id,
                    urls=batch.urls,
                    source=batch.source,
                    fetcher=ctx["fetcher"],
                    pool=ctx["pool"],
                    settings=settings,
                    deadline=started + settings.job_timeout - deadline_margin(settings),
                    record_unfinished=job_try >= settings.job_tries,
                    budget=ctx["budget"],
                    # Oldest job first when slots are scarce: jobs finish one after another
                    # instead of in waves (see worker/slots.py).
                    priority=int(ctx["enqueue_time"].timestamp() * 1000),
                    sources=states,
                )
        except TimeoutError as exc:
            delay = defer_delay(settings, job_try)
            log.warning("job.overran", extra={"try": job_try, "defer_s": round(delay, 1)})
            metrics.record_job("overran")
            raise Retry(defer=delay) from exc
        except pipeline.DeadlineError as exc:
            # arq would fail a job that hits its timeout, for good. Stop just before, keep what
            # landed, and run again at once: the next run skips what is already there.
            log.warning(
                "job.continued", extra={"try": job_try, "landed": exc.landed, "left": exc.remaining}
            )
            metrics.record_job("continued")
            raise Retry(defer=0) from exc
        except StoreError as exc:
            # Postgres is down or refusing writes: the whole job is worth another try later.
            delay = defer_delay(settings, job_try)
            log.warning(
                "job.deferred",
                extra={"reason": str(exc), "try": job_try, "defer_s": round(delay, 1)},
            )
            metrics.record_job("deferred")
            raise Retry(defer=delay) from exc
        result = summary.as_dict()
        log.info("job.done", extra={k: v for k, v in result.items() if k != "job_id"})
        metrics.record_job("complete")
        return result
