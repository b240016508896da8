"""A batch from URLs to rows: fetchers feed a bounded queue that writers drain in COPY chunks.

This is the core of harvester. It never sees arq: it takes a fetcher, a pool, settings and
URLs, and returns a `BatchSummary`. Memory is bounded by the queue and the writers' chunks,
not by the size of the batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from worker import store
from worker.errors import StoreError
from worker.fetch import Failed, Fetched, Fetcher, Outcome
from worker.settings import Settings

log = logging.getLogger("harvester.pipeline")

_DONE = object()
# Pending rows are flushed at least this often, so a slow batch lands progressively.
FLUSH_INTERVAL_S = 1.0
WRITE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What one run of a batch did. JSON-serialisable through `as_dict`."""

    job_id: str
    source: str | None
    urls: int
    distinct_urls: int
    already_done: int
    documents: int
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def urls_per_second(self) -> float:
        done = self.documents + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "source": self.source,
            "urls": self.urls,
            "distinct_urls": self.distinct_urls,
            "already_done": self.already_done,
            "documents": self.documents,
            "failures": dict(sorted(self.failures.items())),
            "seconds": round(self.seconds, 3),
            "urls_per_second": round(self.urls_per_second, 1),
        }


class _Writer:
    """Drains outcomes into chunks and lands them; one per writer task."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        job_id: str,
        source: str | None,
        settings: Settings,
        failures: Counter[str],
    ) -> None:
        self._pool = pool
        self._job_id = job_id
        self._source = source
        self._settings = settings
        self._failure_kinds = failures
        self.documents = 0
        self._docs: list[Fetched] = []
        self._fails: list[Failed] = []
        self._bytes = 0
        self._since = 0.0

    async def run(self, queue: asyncio.Queue[object]) -> None:
        s = self._settings
        while True:
            item = await queue.get()
            if item is _DONE:
                await self._flush()
                return
            if isinstance(item, Fetched):
                self._docs.append(item)
                self._bytes += len(item.body)
            else:
                assert isinstance(item, Failed)
                self._fails.append(item)
            if len(self._docs) + len(self._fails) == 1:
                self._since = time.monotonic()
            if (
                len(self._docs) + len(self._fails) >= s.copy_chunk_rows
                or self._bytes >= s.copy_chunk_bytes
                or time.monotonic() - self._since >= FLUSH_INTERVAL_S
            ):
                await self._flush()

    async def _flush(self) -> None:
        if not self._docs and not self._fails:
            return
        docs, fails = self._docs, self._fails
        self._docs, self._fails, self._bytes = [], [], 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(WRITE_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(StoreError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                written = await store.write_chunk(
                    self._pool, self._job_id, self._source, docs, fails
                )
        self.documents += written.documents
        refused_urls = {f.url for f in written.refused}
        for f in (*fails, *written.refused):
            self._failure_kinds[f.kind] += 1
        if refused_urls:
            log.warning(
                "store.body_refused", extra={"job_id": self._job_id, "count": len(refused_urls)}
            )


async def run(
    *,
    job_id: str,
    urls: Sequence[str],
    source: str | None,
    fetcher: Fetcher,
    pool: asyncpg.Pool,
    settings: Settings,
) -> BatchSummary:
    """Fetch ``urls`` and land one outcome per distinct URL for ``job_id``.

    URLs that already have an outcome for this job (an earlier run was interrupted) are not
    fetched again. Raises `StoreError` if Postgres cannot take the rows; everything a URL can
    do wrong becomes a failure row instead.
    """
    started = time.monotonic()
    distinct = list(dict.fromkeys(urls))
    done = await store.existing_urls(pool, job_id)
    todo = [u for u in distinct if u not in done]

    failures: Counter[str] = Counter()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=settings.write_queue_size)
    n_writers = max(1, min(settings.writers, settings.db_pool_max))
    writers = [_Writer(pool, job_id, source, settings, failures) for _ in range(n_writers)]
    feed: Iterator[str] = iter(todo)

    async def fetch_loop() -> None:
        # Long-lived coroutines pulling from one iterator: cheaper than a task per URL.
        for url in feed:
            outcome: Outcome = await fetcher.fetch(url)
            await queue.put(outcome)

    async def fetch_all() -> None:
        n_fetchers = min(settings.concurrency, len(todo))
        async with asyncio.TaskGroup() as tg:
            for _ in range(n_fetchers):
                tg.create_task(fetch_loop())
        # Only on success: on failure the task group cancels the writers instead.
        for _ in writers:
            await queue.put(_DONE)

    try:
        async with asyncio.TaskGroup() as tg:
            for w in writers:
                tg.create_task(w.run(queue))
            tg.create_task(fetch_all())
    except BaseExceptionGroup as group:
        store_errors = group.subgroup(StoreError)
        if store_errors is not None:
            raise store_errors.exceptions[0] from group
        raise

    return BatchSummary(
        job_id=job_id,
        source=source,
        urls=len(urls),
        distinct_urls=len(distinct),
        already_done=len(distinct) - len(todo),
        documents=sum(w.documents for w in writers),
        failures=dict(failures),
        seconds=time.monotonic() - started,
    )
