"""A batch from URLs to rows: fetchers feed a bounded queue that writers drain in COPY chunks.

This is the core of harvester. It never sees arq: `run` takes a fetcher, a pool, settings and
requests, and returns a `BatchSummary`. Memory is bounded by the queue, the writers' chunks and
the process's `ByteBudget`, not by the size of the batch. A request's identity (URL, method,
body hash: `worker.engine.requests`) is what "already landed" means.

    requests -> BatchRun.fetch_one (x concurrency) -> queue -> ChunkWriter (x writers) -> COPY

(the writers are `worker.engine.writer`'s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import asyncpg

from worker.engine import counters as metrics
from worker.engine import store, walks
from worker.engine.auth import unsigned
from worker.engine.bodies import clean_detail
from worker.engine.budget import ByteBudget, Lease
from worker.engine.chunks import Chunk
from worker.engine.credentials import Profile
from worker.engine.fetch import Build, Fetcher
from worker.engine.leases import JobLease
from worker.engine.outcomes import (
    BatchSummary,
    Failed,
    Fetched,
    Outcome,
    Validators,
)
from worker.engine.pagination import PageSpec, Resume
from worker.engine.polling import (
    NOT_MODIFIED,
    UNCHANGED,
    SourceState,
    answered,
    poll_request,
    settle,
)
from worker.engine.records import RecordSpec
from worker.engine.requests import Request
from worker.engine.writer import DONE, ChunkWriter, OnLanded, Tally, tell, write_retried
from worker.errors import LeaseLostError, StoreError
from worker.settings import Settings

log = logging.getLogger("harvester.pipeline")


@dataclass(frozen=True, slots=True)
class Batch:
    """One run of a job's batch: what to fetch and how (the job's side of `run`)."""

    job_id: str
    requests: Sequence[Request]
    source: str | None
    # time.monotonic() at which fetching stops and what was fetched lands; None: no deadline.
    deadline: float | None = None
    # At the deadline, record the URLs left as `deadline` failures instead of raising.
    record_unfinished: bool = False
    # Fetch slots go to the lowest value first (the job's enqueue time: oldest job first).
    priority: int = 0
    # The registered sources among the requests, by URL: polled (conditionally when GETs) with
    # their cursors (`worker.engine.polling`).
    sources: Mapping[str, SourceState] = field(default_factory=dict)
    # The job's credential profile (its ``auth``), applied to the hosts it lists.
    profile: Profile | None = None
    # Walk each URL's pages (`worker.engine.walks`); None: one request per URL.
    paginate: PageSpec | None = None
    # The run's lease (`worker.engine.leases`): every chunk lands only while the run holds it.
    lease: JobLease | None = None
    # Told of each landed chunk (the change stream); None: nobody listens.
    on_landed: OnLanded | None = None
    # Records extracted from each document and upserted with it (`worker.engine.records`).
    records: RecordSpec | None = None

    @property
    def auth(self) -> str | None:
        """The profile's name, which the job's failures keep (so a replay sends it again)."""
        return None if self.profile is None else self.profile.name


class DeadlineError(Exception):
    """The run's deadline came before every URL landed; what landed stays landed."""

    def __init__(self, landed: int, remaining: int) -> None:
        super().__init__(
            f"deadline reached with {remaining} URL(s) still to fetch ({landed} landed)"
        )
        self.landed = landed
        self.remaining = remaining


class BatchRun:
    """One run of `run`: plan what is left, fetch it into the writers, settle the deadline."""

    def __init__(
        self,
        batch: Batch,
        fetcher: Fetcher,
        pool: asyncpg.Pool,
        settings: Settings,
        budget: ByteBudget,
    ) -> None:
        self.batch = batch
        self._fetcher = fetcher
        self._pool = pool
        self._settings = settings
        self._lease = Lease(budget)
        self._tally = Tally()
        self._fetches = metrics.FetchTally()
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=settings.write_queue_size)
        self._timed_out = False
        self._resume: dict[Request, Resume] = {}
        # A walk that follows Link headers needs them on its pages' outcomes.
        self._links = batch.paginate is not None and batch.paginate.style == "link"

    async def run(self) -> BatchSummary:
        started = time.monotonic()
        distinct = list(dict.fromkeys(self.batch.requests))
        todo = await self._plan(distinct)
        try:
            await self._fetch_and_land(todo)
        finally:
            self._lease.release()
        if self._timed_out:
            await self._settle_deadline(todo)
        t = self._tally
        return BatchSummary(
            job_id=self.batch.job_id,
            source=self.batch.source,
            urls=len(self.batch.requests),
            distinct_urls=len(distinct),
            already_done=len(distinct) - len(todo),
            documents=t.documents,
            failures=dict(t.failures),
            seconds=time.monotonic() - started,
            unchanged=t.polls[UNCHANGED],
            not_modified=t.polls[NOT_MODIFIED],
            pages=t.pages,
            records=t.records,
            record_failures=dict(t.record_failures),
        )

    async def _plan(self, distinct: list[Request]) -> list[Request]:
        """The requests left to do; for walks, also where interrupted ones go on."""
        b, s = self.batch, self._settings
        if b.paginate is None:
            return await without_outcome(self._pool, b.job_id, distinct, s)
        plan = await walks.plan(self._pool, b.job_id, distinct, s.max_url_length)
        self._resume = plan.resume
        return plan.todo

    async def _fetch_and_land(self, todo: list[Request]) -> None:
        s = self._settings
        writers = [
            ChunkWriter(self._pool, self.batch, s, self._lease, self._tally)
            for _ in range(max(1, min(s.writers, s.db_pool_max)))
        ]
        try:
            async with asyncio.TaskGroup() as tg:
                for w in writers:
                    tg.create_task(w.run(self._queue))
                tg.create_task(self._fetch_all(todo, len(writers)))
        except BaseExceptionGroup as group:
            # A lost lease first: the other errors are of a run that must stop anyway.
            for kind in (LeaseLostError, StoreError):
                errors = group.subgroup(kind)
                if errors is not None:
                    raise errors.exceptions[0] from group
            raise

    async def _fetch_all(self, todo: list[Request], n_writers: int) -> None:
        feed = iter(todo)
        deadline = self.batch.deadline
        loop = asyncio.get_running_loop()
        stop_at = None if deadline is None else loop.time() + (deadline - time.monotonic())
        try:
            async with asyncio.timeout_at(stop_at), asyncio.TaskGroup() as tg:
                for _ in range(min(self._settings.concurrency, len(todo))):
                    tg.create_task(self._fetch_loop(feed))
        except TimeoutError:
            self._timed_out = True  # in-flight fetches were cancelled; what was queued lands
        finally:
            self._fetches.flush()
        # Only when fetching ended normally: on failure the task group cancels the writers.
        for _ in range(n_writers):
            await self._queue.put(DONE)

    async def _fetch_loop(self, feed: Iterator[Request]) -> None:
        # Long-lived coroutines pulling from one iterator: cheaper than a task per URL. Each URL
        # is one call of fetch_one, so its body is not kept alive in this loop's variables
        # while the next URL is fetched (outside the budget, which stops counting it once landed).
        for request in feed:
            await self._fetch_one(request)

    async def _fetch_one(self, request: Request) -> None:
        sources = self.batch.sources
        state = sources.get(request.url) if sources else None
        if self.batch.paginate is not None:
            await self._walk(request, self.batch.paginate, state)
            return
        if state is None:
            await self._put(await self._fetch(request))
            return
        sent = poll_request(state, request)
        outcome = answered(await self._fetch(sent, state.conditional(request)), request)
        item = settle(state, outcome, self._settings)
        if isinstance(outcome, Fetched) and item.row is not outcome:
            self._lease.give(len(outcome.body))  # admitted, but the poll found it unchanged
        await self._put(item)

    async def _fetch(
        self,
        request: Request,
        validators: Validators | None = None,
        *,
        at: str | None = None,
        build: Build | None = None,
    ) -> Outcome:
        """`Fetcher.fetch` with the batch's priority, budget, profile and links (``at`` and
        ``build`` for a walk's pages); a bug costs the URL a failure, not the batch."""
        try:
            # The body is admitted to the budget while its request slot is still held.
            outcome: Outcome = await self._fetcher.fetch(
                request,
                self.batch.priority,
                validators,
                self._lease.take,
                self.batch.profile,
                links=self._links,
                at=at,
                build=build,
            )
        except Exception as exc:
            # A bug must cost one URL a failure row, never the whole batch.
            url = request.url if at is None else at
            log.exception("fetch.internal_error", extra={"url": url})
            detail = clean_detail(f"{type(exc).__name__}: {exc}")
            outcome = Failed(url, "internal", detail, None, 0, request=request)
        self._fetches.record(outcome)
        if isinstance(outcome, Failed) and log.isEnabledFor(logging.DEBUG):
            log.debug(
                "fetch.failed",
                extra={"url": request.url, "kind": outcome.kind, "detail": outcome.detail},
            )
        return outcome

    async def _put(self, item: object) -> None:
        queue = self._queue
        if queue.full():
            await queue.put(item)
        else:
            queue.put_nowait(item)

    async def _walk(self, request: Request, spec: PageSpec, state: SourceState | None) -> None:
        """Walk the pages of ``request`` inside this fetch loop: one request at a time per walk,
        each page through the same `Fetcher` (and so the same per-host decisions) as any
        request, with the first request's method, body and headers. A registered source's walk
        starts from its poll request (`walks.polled`)."""
        fetch: walks.FetchPage = self._fetch
        emit: walks.Emit = self._put
        first = request
        resume = self._resume.get(request)
        if state is not None:
            first = poll_request(state, request)
            fetch, emit = walks.polled(
                request, state, self._fetch, self._put, self._settings, resumed=resume is not None
            )
        profile = self.batch.profile
        clean = None if profile is None or profile.type != "query" else partial(unsigned, profile)
        try:
            await walks.walk(first, spec, fetch, emit, resume, clean)
        except Exception as exc:
            # A bug must cost one walk a failure row, never the whole batch.
            log.exception("walk.internal_error", extra={"url": request.url})
            detail = clean_detail(f"{type(exc).__name__}: {exc}")
            await self._put(Failed(request.url, "internal", detail, None, 0, request=request))

    async def _settle_deadline(self, todo: list[Request]) -> None:
        landed = self._tally.landed
        unfinished = [r for r in todo if r.key() not in landed]
        if not unfinished:
            return
        if not self.batch.record_unfinished:
            raise DeadlineError(landed=len(self._tally.landed), remaining=len(unfinished))
        self._tally.failures["deadline"] += await record_failures(
            self._pool,
            Chunk(
                self.batch.job_id, self.batch.source, lease=self.batch.lease, auth=self.batch.auth
            ),
            unfinished,
            self._settings,
            kind="deadline",
            detail="the job's last allowed run ended before this URL was fetched",
            paginated=self.batch.paginate is not None,
            on_landed=self.batch.on_landed,
        )


async def run(
    batch: Batch,
    *,
    fetcher: Fetcher,
    pool: asyncpg.Pool,
    settings: Settings,
    budget: ByteBudget | None = None,
) -> BatchSummary:
    """Fetch ``batch.requests`` and land one outcome per distinct request (URL, method, body)
    for ``batch.job_id``.

    Requests that already have an outcome for this job (an earlier run was interrupted) are not
    fetched again. At ``batch.deadline`` fetching stops and what was fetched lands; the URLs
    left then raise `DeadlineError` or, with ``record_unfinished``, land as failures of kind
    ``deadline``. Raises `StoreError` if Postgres cannot take the rows, and `LeaseLostError` as
    soon as a write finds that ``batch.lease`` went to a newer run; everything a URL can do
    wrong becomes a failure row instead. ``budget`` is the process's (a run of its own when
    None).
    """
    budget = budget if budget is not None else ByteBudget(settings.buffer_bytes)
    return await BatchRun(batch, fetcher, pool, settings, budget).run()


async def record_failures(
    pool: asyncpg.Pool,
    job: Chunk,
    requests: Sequence[Request],
    settings: Settings,
    *,
    kind: str,
    detail: str,
    paginated: bool = False,
    on_landed: OnLanded | None = None,
) -> int:
    """Land a failure row of ``kind`` for each of ``requests`` that has no outcome yet for
    ``job.job_id`` (under ``job.source``, fenced by ``job.lease``); return how many. For a
    ``paginated`` job, a request whose walk has not ended gets one, for the page its walk would
    have fetched next. ``on_landed`` is told of each committed chunk, as a run's are."""
    fails = (
        await walks.unfinished(pool, job.job_id, requests, settings.max_url_length, kind, detail)
        if paginated
        else [
            Failed(r.url, kind, detail, None, 0, request=r)
            for r in await without_outcome(pool, job.job_id, requests, settings)
        ]
    )
    step = settings.copy_chunk_rows
    for i in range(0, len(fails), step):
        chunk = replace(job, fails=fails[i : i + step])
        written = await write_retried(pool, chunk, settings)
        if on_landed is not None:
            tell(on_landed, chunk, written)
    return len(fails)


async def without_outcome(
    pool: asyncpg.Pool, job_id: str, requests: Sequence[Request], settings: Settings
) -> list[Request]:
    """The distinct ``requests`` that have no row for ``job_id`` yet. Rows hold URLs in their
    `store.stored_url` form, so requests are compared in that form."""
    done = await store.existing_requests(pool, job_id)
    distinct = list(dict.fromkeys(requests))
    if not done:
        return distinct  # a job's first run: nothing to compare
    limit = settings.max_url_length
    return [r for r in distinct if r.key(store.stored_url(r.url, limit)) not in done]
