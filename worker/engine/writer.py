"""The writer side of a batch's run: outcomes taken from the fetchers' queue, cut into chunks (by
rows, bytes, or a second) and landed by COPY, each chunk retried as a whole, counted, and told
to whoever listens (the change stream)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from worker.backoff import Backoff
from worker.engine import counters as metrics
from worker.engine.budget import Lease
from worker.engine.chunks import Chunk, Written
from worker.engine.leases import JobLease
from worker.engine.outcomes import Failed, Fetched, outcome_key
from worker.engine.pagination import PageSpec
from worker.engine.polling import NOT_MODIFIED, UNCHANGED, Polled, SourceUpdate
from worker.engine.records import RecordSpec
from worker.engine.requests import RequestKey
from worker.engine.writes import write_chunk
from worker.errors import StoreError
from worker.settings import Settings

log = logging.getLogger("harvester.pipeline")

DONE = object()  # put on a writer's queue after the last outcome
# Pending rows are flushed at least this often, so a slow batch lands progressively.
FLUSH_INTERVAL_S = 1.0
WRITE_ATTEMPTS = 3
# A chunk whose connection dropped is tried again at once, then after a short wait.
WRITE_BACKOFF = Backoff(base=0.2, cap=2.0, jitter="equal")


@dataclass(frozen=True, slots=True)
class Landed:
    """What one chunk landed, for whoever listens (the runtime's change stream)."""

    job_id: str
    source: str | None
    urls: int  # outcomes in the chunk: documents and failures
    documents: int  # rows added (fewer than its documents when a re-run found them)
    failures: Mapping[str, int]  # by kind


# Told of each chunk after its transaction committed; must return at once and never raise (a
# listener that does is logged and counted, and the job goes on).
OnLanded = Callable[[Landed], None]


class Landing(Protocol):
    """What a writer needs of the batch it lands (`worker.engine.pipeline.Batch` is one)."""

    @property
    def job_id(self) -> str: ...
    @property
    def source(self) -> str | None: ...
    @property
    def lease(self) -> JobLease | None: ...
    @property
    def records(self) -> RecordSpec | None: ...
    @property
    def auth(self) -> str | None: ...
    @property
    def on_landed(self) -> OnLanded | None: ...
    @property
    def paginate(self) -> PageSpec | None: ...


@dataclass
class Tally:
    """What a run's writers have landed so far, shared by them."""

    landed: set[RequestKey] = field(default_factory=set)
    documents: int = 0
    pages: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    polls: Counter[str] = field(default_factory=Counter)
    records: int = 0
    record_failures: Counter[str] = field(default_factory=Counter)


async def write_retried(pool: asyncpg.Pool, chunk: Chunk, settings: Settings) -> Written:
    """`write_chunk`, retried a few times: a chunk is atomic, so a retry cannot duplicate."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(WRITE_ATTEMPTS),
        wait=WRITE_BACKOFF.tenacity_wait(),
        retry=retry_if_exception(lambda e: isinstance(e, StoreError) and e.transient),
        reraise=True,
    )
    started = time.monotonic()
    async for attempt in retrying:
        with attempt:
            written = await write_chunk(pool, chunk, max_url_length=settings.max_url_length)
    metrics.record_write(written.documents, written.failures, time.monotonic() - started)
    return written


class ChunkWriter:
    """Drains outcomes into chunks and lands them; one per writer task of a run."""

    def __init__(
        self, pool: asyncpg.Pool, batch: Landing, settings: Settings, lease: Lease, tally: Tally
    ) -> None:
        self._pool = pool
        self._batch = batch
        self._settings = settings
        self._lease = lease
        self._tally = tally
        self._docs: list[Fetched] = []
        self._fails: list[Failed] = []
        self._updates: list[SourceUpdate] = []
        self._bytes = 0
        self._since = 0.0

    async def run(self, queue: asyncio.Queue[object]) -> None:
        """Take outcomes until told there are no more; land them in chunks as they fill."""
        while True:
            item = await self._next(queue)
            if item is None:
                continue  # the flush interval passed and what was pending has landed
            if item is DONE:
                await self._flush()
                return
            self._add(item)
            # A landed body must not stay alive in this variable while the next outcome is
            # awaited: the budget no longer counts it.
            item = None
            if self._full():
                await self._flush()

    async def _next(self, queue: asyncio.Queue[object]) -> object | None:
        if not queue.empty():
            return queue.get_nowait()  # the busy case: no timer, no suspension
        if not (self._docs or self._fails or self._updates):
            return await queue.get()
        # Rows are waiting: land them once they are FLUSH_INTERVAL_S old, even if no further
        # outcome arrives (the rest of the batch may be slow).
        try:
            async with asyncio.timeout(self._since + FLUSH_INTERVAL_S - time.monotonic()):
                return await queue.get()
        except TimeoutError:
            await self._flush()
            return None

    def _add(self, item: object) -> None:
        if isinstance(item, Polled):
            self._updates.append(item.update)
            item = item.row
        if isinstance(item, Fetched):
            self._docs.append(item)
            self._bytes += len(item.body)
        elif isinstance(item, Failed):
            self._fails.append(item)
        if len(self._docs) + len(self._fails) + len(self._updates) == 1:
            self._since = time.monotonic()

    def _full(self) -> bool:
        s = self._settings
        return (
            len(self._docs) + len(self._fails) + len(self._updates) >= s.copy_chunk_rows
            or self._bytes >= s.copy_chunk_bytes
            or time.monotonic() - self._since >= FLUSH_INTERVAL_S
        )

    async def _flush(self) -> None:
        if not self._docs and not self._fails and not self._updates:
            return
        b = self._batch
        chunk = Chunk(
            b.job_id, b.source, self._docs, self._fails, self._updates, b.lease, b.records, b.auth
        )
        held = self._bytes
        self._docs, self._fails, self._updates, self._bytes = [], [], [], 0
        written = await write_retried(self._pool, chunk, self._settings)
        self._lease.give(held)
        self._count(chunk, written)
        if b.on_landed is not None:
            tell(b.on_landed, chunk, written)

    def _count(self, chunk: Chunk, written: Written) -> None:
        t = self._tally
        # A page of a walk that has a next page does not end its request.
        t.landed.update(outcome_key(d) for d in chunk.docs if d.next_url is None)
        t.landed.update(map(outcome_key, chunk.fails))
        for u in chunk.updates:
            if u.key is not None:
                t.landed.add(u.key)
            if u.outcome in (UNCHANGED, NOT_MODIFIED) and not u.document:
                t.polls[u.outcome] += 1
        t.documents += written.documents
        if self._batch.paginate is not None:
            t.pages += written.documents
        for f in (*chunk.fails, *written.refused):
            t.failures[f.kind] += 1
        t.records += written.records
        t.record_failures.update(written.record_failures)
        if written.refused:
            log.warning(
                "store.body_refused",
                extra={"job_id": chunk.job_id, "count": len({f.url for f in written.refused})},
            )


def tell(on_landed: OnLanded, chunk: Chunk, written: Written) -> None:
    """Tell ``on_landed`` of a committed chunk; its trouble never reaches the job."""
    kinds = Counter(f.kind for f in (*chunk.fails, *written.refused))
    landed = Landed(
        chunk.job_id, chunk.source, len(chunk.docs) + len(chunk.fails), written.documents, kinds
    )
    try:
        on_landed(landed)
    except Exception:
        log.exception("events.listener_failed", extra={"job_id": chunk.job_id})
        metrics.EVENTS_LOST.inc()
