"""What docs/scaling.md says of arq's coordination, checked on the session's Valkey with real arq
workers (`bench.fleet`, jobs that hold their slot until released): one queue runs at most arq's
read limit of jobs at once, however many job slots its workers have."""

from __future__ import annotations

import redis.asyncio as aioredis

from bench.fleet import held
from tests.helpers import Services
from worker.runtime.app import worker_settings
from worker.settings import Settings


async def test_one_queue_runs_at_most_arqs_read_limit_of_jobs_at_once(
    services: Services, redis: aioredis.Redis, settings: Settings
) -> None:
    """30 workers of harvester's default HARVESTER_MAX_JOBS (4) have 120 job slots and a job for
    each, but with arq's default read limit (100 job ids a poll) only 100 run, and no more start
    while they run; a read limit of 500 lets the same fleet fill all 120, so the limit is what
    holds it."""
    assert Settings.model_fields["max_jobs"].default == 4  # the docs' arithmetic uses it
    assert "queue_read_limit" not in worker_settings(settings)  # harvester keeps arq's default
    assert await held(services.redis_url, workers=30) == 100
    assert await held(services.redis_url, workers=30, read_limit=500, watch=0) == 120
