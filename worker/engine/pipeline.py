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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from worker.backoff import Backoff
from worker.engine import counters as metrics
from worker.engine import store
from worker.engine.fetch import PARSE_MAX_BYTES, Failed, Fetched, Fetcher, Outcome, clean_detail
from worker.engine.polling import NOT_MODIFIED, UNCHANGED, Polled, SourceState, SourceUpdate, settle
from worker.errors import StoreError
from worker.settings import Settings

log = logging.getLogger("harvester.pipeline")

_DONE = object()
# Pending rows are flushed at least this often, so a slow batch lands progressively.
FLUSH_INTERVAL_S = 1.0
WRITE_ATTEMPTS = 3
# A chunk whose connection dropped is tried again at once, then after a short wait.
WRITE_BACKOFF = Backoff(base=0.2, cap=2.0, jitter="equal")


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
    unchanged: int = 0  # scheduled polls whose body had not changed: no row
    not_modified: int = 0  # scheduled polls answered 304: no row

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def urls_per_second(self) -> float:
        done = self.documents + self.failed + self.unchanged + self.not_modified
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
            "unchanged": self.unchanged,
            "not_modified": self.not_modified,
            "seconds": round(self.seconds, 3),
            "urls_per_second": round(self.urls_per_second, 1),
        }


# orjson builds up to about 36 bytes of Python objects per byte it parses ([[],[],...] is the
# worst shape we measured), for one body at a time of at most PARSE_MAX_BYTES.
PARSE_PEAK_BYTES = 40 * PARSE_MAX_BYTES
# What a connection's socket and parser buffers hold besides the body read so far.
CONNECTION_BUFFER_BYTES = 256 * 1024


def memory_bound(settings: Settings) -> int:
    """Bytes a worker process may hold at its peak over its idle baseline, whatever the number
    of jobs or the size of their batches: the README's Sizing formula.

    - ``concurrency`` bodies and connection buffers (`CONNECTION_BUFFER_BYTES`): each request
      slot holds at most one body, being read, checked, or waiting for the `ByteBudget`
      (`Fetcher.fetch` admits it before giving the slot back);
    - 3 x ``max(buffer_bytes, max_body_bytes)``: what the budget admits (queued, or in writers'
      chunks), and COPY's two encoded copies of it (the buffer it fills, the message it sends);
    - 3 bodies more: the one transient copy at a time (pieces joined, strings blanked for the
      exponent check) and freed large blocks the allocator has not yet given back;
    - `PARSE_PEAK_BYTES` for the one parse at a time of a body up to `PARSE_MAX_BYTES`.
    """
    body = settings.max_body_bytes
    slots = settings.concurrency * (body + CONNECTION_BUFFER_BYTES)
    held = slots + 3 * body + 3 * max(settings.buffer_bytes, body)
    return held + PARSE_PEAK_BYTES


class ByteBudget:
    """Bounds the body bytes held between fetchers and the database, whatever the batch size.

    One per worker process, shared by its jobs (see `worker.runtime.app.startup`), so memory is
    flat in batch size and in the number of running jobs. A fetcher takes its body's size before
    queueing it and a writer gives it back once the chunk has landed. When nothing is held, one
    body is always let through, so a body larger than the budget cannot stall.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def take(self, n: int) -> None:
        if self.used + n <= self.limit:
            self.used += n  # the usual case, without touching the event
            return
        while self.used and self.used + n > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += n

    def give(self, n: int) -> None:
        self.used -= n
        if not self._freed.is_set():
            self._freed.set()


class _Lease:
    """One run's share of the process's `ByteBudget`, returned whole when the run ends however
    it ends (a cancelled job must not keep bytes the other jobs are waiting for)."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    async def take(self, n: int) -> None:
        await self._budget.take(n)
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n
        self._budget.give(n)

    def release(self) -> None:
        if self.held:
            self._budget.give(self.held)
            self.held = 0


class _Writer:
    """Drains outcomes into chunks and lands them; one per writer task."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        job_id: str,
        source: str | None,
        settings: Settings,
        failures: Counter[str],
        landed: set[str],
        budget: _Lease,
        polls: Counter[str],
    ) -> None:
        self._pool = pool
        self._job_id = job_id
        self._source = source
        self._settings = settings
        self._failure_kinds = failures
        self._landed = landed
        self._budget = budget
        self._polls = polls
        self.documents = 0
        self._docs: list[Fetched] = []
        self._fails: list[Failed] = []
        self._updates: list[SourceUpdate] = []
        self._bytes = 0
        self._since = 0.0

    async def run(self, queue: asyncio.Queue[object]) -> None:
        s = self._settings
        while True:
            if not queue.empty():
                item = queue.get_nowait()  # the busy case: no timer, no suspension
            elif self._docs or self._fails or self._updates:
                # Rows are waiting: land them once they are FLUSH_INTERVAL_S old, even if no
                # further outcome arrives (the rest of the batch may be slow).
                try:
                    async with asyncio.timeout(self._since + FLUSH_INTERVAL_S - time.monotonic()):
                        item = await queue.get()
                except TimeoutError:
                    await self._flush()
                    continue
            else:
                item = await queue.get()
            if item is _DONE:
                await self._flush()
                return
            if isinstance(item, Polled):
                self._updates.append(item.update)
                item = item.row
            if isinstance(item, Fetched):
                self._docs.append(item)
                self._bytes += len(item.body)
            elif isinstance(item, Failed):
                self._fails.append(item)
            pending = len(self._docs) + len(self._fails) + len(self._updates)
            if pending == 1:
                self._since = time.monotonic()
            if (
                pending >= s.copy_chunk_rows
                or self._bytes >= s.copy_chunk_bytes
                or time.monotonic() - self._since >= FLUSH_INTERVAL_S
            ):
                await self._flush()
            # A landed body must not stay alive in this variable while the next outcome is
            # awaited: the budget no longer counts it.
            item = None

    async def _flush(self) -> None:
        if not self._docs and not self._fails and not self._updates:
            return
        docs, fails, updates, held = self._docs, self._fails, self._updates, self._bytes
        self._docs, self._fails, self._updates, self._bytes = [], [], [], 0
        written = await _write(
            self._pool, self._job_id, self._source, docs, fails, updates, self._settings
        )
        self._budget.give(held)
        self._landed.update(d.url for d in docs)
        self._landed.update(f.url for f in fails)
        for u in updates:
            self._landed.add(u.url)
            if u.outcome in (UNCHANGED, NOT_MODIFIED) and not u.document:
                self._polls[u.outcome] += 1
        self.documents += written.documents
        refused_urls = {f.url for f in written.refused}
        for f in (*fails, *written.refused):
            self._failure_kinds[f.kind] += 1
        if refused_urls:
            log.warning(
                "store.body_refused", extra={"job_id": self._job_id, "count": len(refused_urls)}
            )


async def _write(
    pool: asyncpg.Pool,
    job_id: str,
    source: str | None,
    docs: Sequence[Fetched],
    fails: Sequence[Failed],
    updates: Sequence[SourceUpdate],
    settings: Settings,
) -> store.Written:
    """`store.write_chunk`, retried a few times: a chunk is atomic, so a retry cannot duplicate."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(WRITE_ATTEMPTS),
        wait=WRITE_BACKOFF.tenacity_wait(),
        retry=retry_if_exception(lambda e: isinstance(e, StoreError) and e.transient),
        reraise=True,
    )
    started = time.monotonic()
    async for attempt in retrying:
        with attempt:
            written = await store.write_chunk(
                pool, job_id, source, docs, fails, updates, max_url_length=settings.max_url_length
            )
    metrics.record_write(written.documents, written.failures, time.monotonic() - started)
    return written


class DeadlineError(Exception):
    """The run's deadline came before every URL landed; what landed stays landed."""

    def __init__(self, landed: int, remaining: int) -> None:
        super().__init__(
            f"deadline reached with {remaining} URL(s) still to fetch ({landed} landed)"
        )
        self.landed = landed
        self.remaining = remaining


async def record_failures(
    *,
    job_id: str,
    urls: Sequence[str],
    source: str | None,
    pool: asyncpg.Pool,
    settings: Settings,
    kind: str,
    detail: str,
) -> int:
    """Land a failure row of ``kind`` for each of ``urls`` that has no outcome yet."""
    todo = await _without_outcome(pool, job_id, urls, settings)
    step = settings.copy_chunk_rows
    for i in range(0, len(todo), step):
        chunk = [Failed(u, kind, detail, None, 0) for u in todo[i : i + step]]
        await _write(pool, job_id, source, [], chunk, (), settings)
    return len(todo)


async def _without_outcome(
    pool: asyncpg.Pool, job_id: str, urls: Sequence[str], settings: Settings
) -> list[str]:
    """The distinct ``urls`` that have no row for ``job_id`` yet. Rows hold URLs in their
    `store.stored_url` form, so payload URLs are compared in that form."""
    done = await store.existing_urls(pool, job_id)
    limit = settings.max_url_length
    return [u for u in dict.fromkeys(urls) if store.stored_url(u, limit) not in done]


async def run(
    *,
    job_id: str,
    urls: Sequence[str],
    source: str | None,
    fetcher: Fetcher,
    pool: asyncpg.Pool,
    settings: Settings,
    deadline: float | None = None,
    record_unfinished: bool = False,
    budget: ByteBudget | None = None,
    priority: int = 0,
    sources: Mapping[str, SourceState] | None = None,
) -> BatchSummary:
    """Fetch ``urls`` and land one outcome per distinct URL for ``job_id``.

    URLs that already have an outcome for this job (an earlier run was interrupted) are not
    fetched again. At ``deadline`` (a `time.monotonic()` value) fetching stops and what was
    fetched lands; the URLs left then raise `DeadlineError` or, with ``record_unfinished``,
    land as failures of kind ``deadline``. Raises `StoreError` if Postgres cannot take the
    rows; everything a URL can do wrong becomes a failure row instead.

    URLs found in ``sources`` are polls of registered sources: fetched conditionally, landed
    only when changed, and their source state updated with their rows (`worker.engine.polling`).
    """
    started = time.monotonic()
    distinct = list(dict.fromkeys(urls))
    todo = await _without_outcome(pool, job_id, distinct, settings)

    failures: Counter[str] = Counter()
    polls: Counter[str] = Counter()
    landed: set[str] = set()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=settings.write_queue_size)
    n_writers = max(1, min(settings.writers, settings.db_pool_max))
    lease = _Lease(budget if budget is not None else ByteBudget(settings.buffer_bytes))
    writers = [
        _Writer(pool, job_id, source, settings, failures, landed, lease, polls)
        for _ in range(n_writers)
    ]
    feed: Iterator[str] = iter(todo)
    loop = asyncio.get_running_loop()
    stop_at = None if deadline is None else loop.time() + (deadline - time.monotonic())
    timed_out = False

    async def fetch_loop() -> None:
        # Long-lived coroutines pulling from one iterator: cheaper than a task per URL. Each URL
        # is one call of fetch_one, so its body is not kept alive in this loop's variables
        # while the next URL is fetched (outside the budget, which stops counting it once landed).
        for url in feed:
            await fetch_one(url)

    async def fetch_one(url: str) -> None:
        state = sources.get(url) if sources else None
        try:
            # The body is admitted to the budget while its request slot is still held.
            outcome: Outcome = await fetcher.fetch(
                url, priority, state.validators if state is not None else None, lease.take
            )
        except Exception as exc:
            # A bug must cost one URL a failure row, never the whole batch.
            log.exception("fetch.internal_error", extra={"url": url})
            outcome = Failed(url, "internal", clean_detail(f"{type(exc).__name__}: {exc}"), None, 0)
        metrics.record_fetch(outcome)
        item: Outcome | Polled = outcome
        if state is not None:
            item = settle(state, outcome, settings)
        row = item.row if isinstance(item, Polled) else item
        if isinstance(outcome, Fetched) and row is not outcome:
            lease.give(len(outcome.body))  # admitted, but a poll found it unchanged
        if queue.full():
            await queue.put(item)
        else:
            queue.put_nowait(item)

    async def fetch_all() -> None:
        nonlocal timed_out
        n_fetchers = min(settings.concurrency, len(todo))
        try:
            async with asyncio.timeout_at(stop_at), asyncio.TaskGroup() as tg:
                for _ in range(n_fetchers):
                    tg.create_task(fetch_loop())
        except TimeoutError:
            timed_out = True  # in-flight fetches were cancelled; what was queued still lands
        # Only when fetching ended normally: on failure the task group cancels the writers.
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
    finally:
        lease.release()

    if timed_out:
        unfinished = [u for u in todo if u not in landed]
        if unfinished and not record_unfinished:
            raise DeadlineError(landed=len(landed), remaining=len(unfinished))
        if unfinished:
            failures["deadline"] += await record_failures(
                job_id=job_id,
                urls=unfinished,
                source=source,
                pool=pool,
                settings=settings,
                kind="deadline",
                detail="the job's last allowed run ended before this URL was fetched",
            )

    return BatchSummary(
        job_id=job_id,
        source=source,
        urls=len(urls),
        distinct_urls=len(distinct),
        already_done=len(distinct) - len(todo),
        documents=sum(w.documents for w in writers),
        failures=dict(failures),
        seconds=time.monotonic() - started,
        unchanged=polls[UNCHANGED],
        not_modified=polls[NOT_MODIFIED],
    )
