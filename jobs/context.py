"""The typed arq context: what on_startup puts in ``ctx`` and what arq adds for each job."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import datetime
from typing import NotRequired, TypedDict

import asyncpg
from arq.connections import ArqRedis

from worker.engine.budget import ByteBudget
from worker.engine.credentials import Credentials
from worker.engine.fetch import Fetcher
from worker.queue.events import EventStream
from worker.settings import Settings


class WorkerContext(TypedDict):
    """Process-wide resources, created in on_startup and closed in on_shutdown."""

    redis: ArqRedis
    settings: Settings
    fetcher: Fetcher
    pool: asyncpg.Pool
    budget: ByteBudget
    credentials: Credentials
    exit_stack: AsyncExitStack
    events: NotRequired[EventStream]  # the change stream, when HARVESTER_EVENTS_STREAM is set
    worker_id: NotRequired[
        str
    ]  # this worker process, <host>:<pid>[:<n>]: the owner of the leases it takes


class JobContext(WorkerContext):
    """What a job function receives: the worker context plus arq's per-job keys."""

    job_id: str
    job_try: int
    enqueue_time: datetime
    score: int
