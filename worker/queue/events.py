"""The change stream: every landed chunk appended to a capped Redis stream (``harvester:events``,
HARVESTER_EVENTS_STREAM) for services to ``XREAD``.

The pipeline tells `EventStream.emit` of each chunk after its transaction committed; `emit`
only puts the event in a bounded buffer, and a background task appends what is buffered with
``XADD ... MAXLEN ~ N`` (HARVESTER_EVENTS_MAXLEN), a pipeline of commands at a time. So the
stream never slows a job nor fails one: an event that finds the buffer full, or that Redis
refuses, is dropped, logged and counted (``harvester_events_lost_total``). The stream is a
notification, not a record: the rows are in Postgres, and a consumer that missed events reads
them there.

An entry's fields: ``job_id``, ``source`` (empty when none), ``urls`` (outcomes in the chunk),
``documents`` (rows added), ``failures`` (JSON: count by kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from worker.engine import counters as metrics
from worker.engine.writer import Landed
from worker.settings import Settings

log = logging.getLogger("harvester.events")

BUFFER: Final = 10_000  # events waiting for Redis, at most
BATCH: Final = 500  # events appended per round trip, at most


def fields(event: Landed) -> dict[FieldT, EncodableT]:
    """A stream entry's fields for ``event``."""
    return {
        "job_id": event.job_id,
        "source": event.source or "",
        "urls": event.urls,
        "documents": event.documents,
        "failures": orjson.dumps(dict(event.failures)).decode(),
    }


class EventStream:
    """Appends landed chunks to the stream in the background; one per worker process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._key = settings.events_stream
        self._maxlen = settings.events_maxlen
        self._buffer: asyncio.Queue[Landed] = asyncio.Queue(BUFFER)
        self._task: asyncio.Task[None] | None = None
        self.lost = 0

    def emit(self, event: Landed) -> None:
        """Buffer ``event`` for the stream; never waits, never raises."""
        try:
            self._buffer.put_nowait(event)
        except asyncio.QueueFull:
            self._lose(1, "buffer full")

    def _lose(self, count: int, reason: str) -> None:
        metrics.EVENTS_LOST.inc(count)
        if self.lost == 0 or (self.lost + count) // 1000 > self.lost // 1000:
            log.warning("events.lost", extra={"count": count, "reason": reason})
        self.lost += count

    async def _append(self, events: list[Landed]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(self._key, fields(event), maxlen=self._maxlen, approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._lose(len(events), type(exc).__name__)

    async def _loop(self) -> None:
        while True:
            events = [await self._buffer.get()]
            while len(events) < BATCH and not self._buffer.empty():
                events.append(self._buffer.get_nowait())
            await self._append(events)
            for _ in events:
                self._buffer.task_done()

    def start(self) -> None:
        """Append in the background until `stop`."""
        self._task = asyncio.create_task(self._loop(), name="harvester-events")

    async def stop(self) -> None:
        """Append what is buffered (for a second at most), then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await self._buffer.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
