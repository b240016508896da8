"""The last hour of a queue's depth and oldest wait, as the dashboard draws it.

Redis keeps no history of the queue, so `harvester api` samples it itself: a task of the API
process reads what waits every `SAMPLE_S` seconds (`worker.ops.status.waiting_now`: a few Redis
commands, no Postgres) into a ring of the last `KEEP_S` seconds. The history starts when the API
does; a sample Redis could not give is left out (a gap in the chart), never a stopped task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

from arq.connections import ArqRedis
from redis.exceptions import RedisError

from worker.ops.status import Waiting, waiting_now

log = logging.getLogger("harvester.api")

SAMPLE_S: Final = 15.0
KEEP_S: Final = 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # Unix seconds
    queued: int
    oldest_ready_age_s: float | None


class QueueHistory:
    """Samples of one queue, oldest first, at most ``keep_s / sample_s`` of them."""

    def __init__(self, sample_s: float = SAMPLE_S, keep_s: float = KEEP_S) -> None:
        self.sample_s = sample_s
        self._samples: deque[Sample] = deque(maxlen=max(1, round(keep_s / sample_s)))

    def add(self, waiting: Waiting, at: float | None = None) -> None:
        at = time.time() if at is None else at
        self._samples.append(Sample(at, waiting.queued, waiting.oldest_ready_age_s))

    def as_dict(self) -> dict[str, Any]:
        """Parallel lists, as the history endpoint's other series are."""
        return {
            "at": [round(s.at, 1) for s in self._samples],
            "queued": [s.queued for s in self._samples],
            "oldest_ready_age_s": [s.oldest_ready_age_s for s in self._samples],
        }


async def _sample_forever(history: QueueHistory, redis: ArqRedis, queue: str) -> None:
    while True:
        try:
            history.add(await waiting_now(redis, queue))
        except (RedisError, OSError) as exc:
            log.debug("api.queue_sample_missed", extra={"error": f"{type(exc).__name__}: {exc}"})
        await asyncio.sleep(history.sample_s)


@contextlib.asynccontextmanager
async def sampling(history: QueueHistory, redis: ArqRedis, queue: str) -> AsyncIterator[None]:
    """Sample ``queue`` into ``history`` for as long as the block runs."""
    task = asyncio.create_task(_sample_forever(history, redis, queue), name="queue-history")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
