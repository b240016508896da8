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


# How long the API's shutdown waits for a sample in flight before it gives up on it.
STOP_WAIT_S: Final = 2.0


async def _sample_until(
    stop: asyncio.Event, history: QueueHistory, redis: ArqRedis, queue: str
) -> None:
    while not stop.is_set():
        try:
            history.add(await waiting_now(redis, queue))
        except (RedisError, OSError) as exc:
            log.debug("api.queue_sample_missed", extra={"error": f"{type(exc).__name__}: {exc}"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), history.sample_s)


@contextlib.asynccontextmanager
async def sampling(history: QueueHistory, redis: ArqRedis, queue: str) -> AsyncIterator[None]:
    """Sample ``queue`` into ``history`` for as long as the block runs. The task is stopped by
    an event, not cancelled in the middle of a Redis command (redis-py can swallow a cancellation
    there and never end); a sample stuck past `STOP_WAIT_S` is left behind."""
    stop = asyncio.Event()
    task = asyncio.create_task(_sample_until(stop, history, redis, queue), name="queue-history")
    try:
        yield
    finally:
        stop.set()
        _, pending = await asyncio.wait({task}, timeout=STOP_WAIT_S)
        for late in pending:
            late.cancel()
