"""The job routes of `harvester api`: ``POST /batches`` validates a batch with the job's own model
(`worker.queue.payload.parse_batch`) and enqueues it; ``GET /batches/{job_id}`` says how it is."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web
from arq.jobs import Job, JobStatus

from worker.engine import store
from worker.errors import BadJobError
from worker.ops.answers import error_answer, json_answer
from worker.ops.appkeys import POOL, PROFILES, REDIS, SETTINGS
from worker.queue.checks import MAX_JOB_ID_LENGTH, has_control, job_id_problems
from worker.queue.client import JobIdTakenError, enqueue_batch
from worker.queue.payload import parse_batch
from worker.queue.serialization import deserialize

log = logging.getLogger("harvester.api")

_LANDED = """
SELECT (SELECT count(*) FROM documents WHERE job_id = $1) AS documents,
       (SELECT count(*) FROM fetch_failures WHERE job_id = $1) AS failures
"""


def _job_id_problem(job_id: object) -> str | None:
    """What is wrong with a client's ``job_id`` (None: nothing, or none given)."""
    if job_id is None:
        return None
    if not isinstance(job_id, str) or not job_id.strip():
        return "'job_id' must be a non-empty string"
    problems = job_id_problems(job_id)
    return f"'job_id': {'; '.join(problems)}" if problems else None


async def post_batch(request: web.Request) -> web.Response:
    """Enqueue a batch; 202 with its job id."""
    if request.content_type != "application/json":
        return error_answer(415, "send the batch as application/json")
    timeout = request.app[SETTINGS].api_body_timeout
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        response = error_answer(
            408, f"request body not received within {timeout:g} s (HARVESTER_API_BODY_TIMEOUT)"
        )
        response.force_close()  # the rest of the body may still be on its way
        return response
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return error_answer(400, f"body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return error_answer(
            400, 'body must be a JSON object: {"urls": [...], "source": ..., "job_id": ...}'
        )
    job_id = body.pop("job_id", None)
    problem = _job_id_problem(job_id)
    if problem is not None:
        return error_answer(422, problem)
    settings = request.app[SETTINGS]
    try:
        batch = parse_batch(
            (),
            body,
            max_urls=settings.max_batch_urls,
            job_id=job_id or "api",
            profiles=request.app.get(PROFILES),
            max_pages=settings.max_pages,
            webhooks=settings.webhook_secret is not None,
        )
    except BadJobError as exc:
        return error_answer(422, str(exc))
    try:
        new_id, new = await enqueue_batch(request.app[REDIS], batch, job_id=job_id)
    except JobIdTakenError as exc:
        return error_answer(409, str(exc))
    # Never a header from raw input: the id may hold anything a URL path cannot.
    location = f"/batches/{quote(new_id, safe='')}"
    body = {"job_id": new_id, "urls": batch.size, "status_url": location}
    if not new:
        # The same batch under the same id: enqueueing is idempotent, nothing was added.
        return json_answer({**body, "duplicate": True}, status=200, Location=location)
    log.info("api.enqueued", extra={"job_id": new_id, "urls": batch.size})
    return json_answer(body, status=202, Location=location)


async def get_batch(request: web.Request) -> web.Response:
    """A batch's status, rows landed so far and, once done, its summary."""
    job_id = request.match_info["job_id"]  # percent-decoded by aiohttp
    if len(job_id) > MAX_JOB_ID_LENGTH or has_control(job_id):
        # No job can have such an id, and Postgres refuses NUL in text: do not ask it.
        return error_answer(404, "no job with that id (unknown, or not a possible job id)")
    redis = request.app[REDIS]
    job = Job(job_id, redis, _queue_name=request.app[SETTINGS].queue, _deserializer=deserialize)
    status = await job.status()
    with store.translated("cannot count the rows landed"):
        landed = await request.app[POOL].fetchrow(_LANDED, job_id)
    assert landed is not None
    if status == JobStatus.not_found and not (landed["documents"] or landed["failures"]):
        return error_answer(404, f"no job {job_id!r} (unknown, or its result has expired)")
    data: dict[str, Any] = {
        "job_id": job_id,
        "status": status.value,
        "landed": {"documents": landed["documents"], "failures": landed["failures"]},
    }
    if status == JobStatus.complete:
        info = await job.result_info()
        if info is not None:
            data["success"] = info.success
            data["summary"] = info.result if info.success else {"error": str(info.result)}
    return json_answer(data)
