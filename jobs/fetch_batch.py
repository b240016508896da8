"""The `fetch_batch` job: fetch a batch of URLs and land one outcome per URL in Postgres."""

from __future__ import annotations

import logging
from typing import Any

from arq import Retry

from worker import pipeline
from worker.context import JobContext
from worker.errors import BadJobError, StoreError
from worker.fetch import backoff_delay
from worker.logs import bound_job
from worker.payload import parse_batch

log = logging.getLogger("harvester.jobs")


async def fetch_batch(ctx: JobContext, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """arq entry point. Payload: ``urls: list[str]``, optional ``source: str``."""
    settings = ctx["settings"]
    job_id = ctx["job_id"]
    with bound_job(job_id):
        try:
            batch = parse_batch(args, kwargs, max_urls=settings.max_batch_urls, job_id=job_id)
        except BadJobError as exc:
            log.error("job.rejected", extra={"reason": str(exc)})  # noqa: TRY400 - arq logs the trace
            raise
        try:
            summary = await pipeline.run(
                job_id=job_id,
                urls=batch.urls,
                source=batch.source,
                fetcher=ctx["fetcher"],
                pool=ctx["pool"],
                settings=settings,
            )
        except StoreError as exc:
            # Postgres is down or refusing writes: the whole job is worth another try later.
            # URLs already landed are skipped on the next run.
            delay = max(1.0, backoff_delay(ctx["job_try"], 2.0, 60.0))
            log.warning(
                "job.deferred",
                extra={"reason": str(exc), "try": ctx["job_try"], "defer_s": round(delay, 1)},
            )
            raise Retry(defer=delay) from exc
        result = summary.as_dict()
        log.info("job.done", extra={k: v for k, v in result.items() if k != "job_id"})
        return result
