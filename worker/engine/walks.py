"""Paginated walks in a batch: a request's pages fetched one after another, each landed as an
outcome of its own, and where an interrupted walk goes on.

`walk` drives a `pagination.Walk` with the batch's fetch (so every page goes through the
`Fetcher`: pacing, slots, the SSRF guard, retries, and whatever is decided per host) and hands
each page to the writers. Every page is an outcome of the request the caller enqueued (its URL,
method and body hash) with its own page number and URL. `plan` reads what earlier runs of the
job landed: a walk that ended (its last page says there is no next one, or it ended in a
failure) is done; one that was interrupted goes on from the first page that has no row, so a
redo adds no row twice. `polled` makes a walk the poll of a registered source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import asyncpg

from worker.engine.bodies import clean_detail
from worker.engine.fetch import Build
from worker.engine.outcomes import (
    Failed,
    Fetched,
    NotModified,
    Outcome,
    ResponseMeta,
    Validators,
)
from worker.engine.pagination import PageSpec, Resume, Walk
from worker.engine.polling import Polled, SourceState, answered, settle, walk_settled
from worker.engine.requests import Request, RequestKey
from worker.engine.store import stored_url, translated
from worker.errors import PaginationError
from worker.settings import Settings


class FetchPage(Protocol):
    """Fetches a walk's ``request`` at the page URL ``at``; ``build`` makes its `Fetched`."""

    def __call__(self, request: Request, /, *, at: str, build: Build) -> Awaitable[Outcome]: ...


class FetchConditional(Protocol):
    """`FetchPage` with the validators that make a request conditional (None: they do not)."""

    def __call__(
        self, request: Request, validators: Validators | None, /, *, at: str, build: Build
    ) -> Awaitable[Outcome]: ...


Emit = Callable[[Outcome], Awaitable[None]]
Put = Callable[[Outcome | Polled], Awaitable[None]]

_LANDED = """
SELECT url, method, body_hash, page, page_url, next_url, false AS failed FROM documents
    WHERE job_id = $1 AND page IS NOT NULL
UNION ALL
SELECT url, method, body_hash, page, page_url, NULL, true FROM fetch_failures WHERE job_id = $1
"""


async def walk(
    request: Request,
    spec: PageSpec,
    fetch: FetchPage,
    emit: Emit,
    resume: Resume | None,
    clean: Callable[[str], str] | None = None,
) -> None:
    """Walk the pages of ``request`` (from ``resume`` when given), emitting one outcome per
    page, each identified as ``request`` with its page number and URL: its document, or the
    failure that ends the walk (a page that could not be fetched, or a next page that cannot be
    followed). ``fetch`` fetches the request at a page's URL (no `Request` built a page),
    and the walk's `_Pages` builds each page's outcome from the answer (one `Fetched` a page).
    ``clean`` takes a secret the API echoed out of a next URL before it is stored or followed."""
    url = request.url
    page, page_url = (1, url) if resume is None else (resume.page, resume.url)
    pages = _Pages(request, spec, resume, clean)
    while True:
        outcome = await fetch(request, at=page_url, build=pages)
        if not isinstance(outcome, Fetched):
            if isinstance(outcome, Failed):
                failed = replace(outcome, url=url, request=request, page=page, page_url=page_url)
                await emit(failed)
            return
        await emit(outcome)
        if pages.ended is not None:
            await emit(_ended(request, pages.ended, page + 1))
            return
        nxt = outcome.next_url
        if nxt is None:
            return
        page, page_url = page + 1, nxt


def polled(
    request: Request,
    state: SourceState,
    fetch: FetchConditional,
    put: Put,
    settings: Settings,
    *,
    resumed: bool,
) -> tuple[FetchPage, Emit]:
    """The fetch and emit of a walk that polls the registered source ``state`` (the walk starts
    from `polling.poll_request`): its first page is conditional (a 304 settles the poll, and
    there is no walk) and its outcome settles the source; every page is an outcome of the
    source's own ``request``. A ``resumed`` walk's page 1 landed in an earlier run."""
    # The validators of the walk's first fetch, when that is page 1.
    pending: list[Validators | None] = [] if resumed else [state.conditional(request)]

    async def fetch_page(asked: Request, *, at: str, build: Build) -> Outcome:
        outcome = await fetch(asked, pending.pop() if pending else None, at=at, build=build)
        if isinstance(outcome, NotModified):
            await put(settle(state, answered(outcome, request), settings))
        return outcome

    async def emit(outcome: Outcome) -> None:
        page = answered(outcome, request)
        if isinstance(page, Fetched | Failed) and page.page == 1:
            await put(walk_settled(state, page, settings))
        else:
            await put(page)

    return fetch_page, emit


class _Pages:
    """A walk's `Build`: makes each page's `Fetched` (the walk's request, the page's number
    and URL, its next URL) straight from the fetcher's answer. The `Walk` is made once a page
    came (a URL the fetcher refuses is page 1's failure already); a next page that cannot be
    followed ends the walk: the page lands without a next URL and ``ended`` says why."""

    __slots__ = ("_clean", "_request", "_resume", "_spec", "_walk", "ended")

    def __init__(
        self,
        request: Request,
        spec: PageSpec,
        resume: Resume | None,
        clean: Callable[[str], str] | None,
    ) -> None:
        self._request, self._spec, self._resume, self._clean = request, spec, resume, clean
        self._walk: Walk | None = None
        self.ended: PaginationError | None = None

    def __call__(
        self,
        status: int,
        body: bytes,
        elapsed_ms: int,
        attempts: int,
        meta: ResponseMeta | None,
        links: tuple[str, ...],
    ) -> Fetched:
        request, pages = self._request, self._walk
        if pages is None:
            pages = self._walk = Walk(self._spec, request.url, self._resume, self._clean)
        page, page_url = pages.page, pages.url  # the page answered, before the walk moves on
        try:
            nxt = pages.next_url(links, body)
        except PaginationError as exc:
            self.ended, nxt = exc, None
        # Built directly, not by dataclasses.replace, which costs several times more.
        return Fetched(
            request.url, status, body, elapsed_ms, attempts, meta, request, (), page, page_url,
            nxt,
        )  # fmt: skip


def _ended(request: Request, exc: PaginationError, page: int) -> Failed:
    """The failure of the page a walk could not go on to."""
    detail = clean_detail(exc.detail)
    return Failed(
        request.url, exc.kind, detail, None, 0, request=request, page=page, page_url=exc.target
    )


@dataclass(frozen=True, slots=True)
class _Landed:
    page: int
    page_url: str
    next_url: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """The walks of a run: which requests to walk and, for interrupted ones, where from."""

    todo: list[Request]
    resume: dict[Request, Resume]


async def plan(
    pool: asyncpg.Pool, job_id: str, requests: Sequence[Request], max_url_length: int
) -> Plan:
    """The walks of ``requests`` still to do for ``job_id``, after what earlier runs landed."""
    with translated("cannot read the pages landed"):
        rows = await pool.fetch(_LANDED, job_id)
    return plan_from([dict(r) for r in rows], requests, max_url_length)


def plan_from(
    rows: Iterable[Mapping[str, Any]], requests: Sequence[Request], max_url_length: int
) -> Plan:
    """`plan` from the rows it read (pure, for tests)."""
    ended: set[RequestKey] = set()
    pages: dict[RequestKey, dict[int, _Landed]] = defaultdict(dict)
    for r in rows:
        key = (r["url"], r.get("method", "GET"), r.get("body_hash"))
        if r["failed"]:
            ended.add(key)
        else:
            pages[key][r["page"]] = _Landed(r["page"], r["page_url"], r["next_url"])
    todo: list[Request] = []
    resume: dict[Request, Resume] = {}
    for request in dict.fromkeys(requests):
        key = request.key(stored_url(request.url, max_url_length))
        if key in ended:
            continue
        landed = pages.get(key)
        if not landed or 1 not in landed:
            # Not started, or page 1 missing: the walk starts over; rows that landed are kept.
            todo.append(request)
            continue
        where = _resume_at(landed)
        if where is not None:
            todo.append(request)
            resume[request] = where
    return Plan(todo, resume)


def _resume_at(landed: dict[int, _Landed]) -> Resume | None:
    """Where a walk that has page 1 goes on: after the last page of its unbroken run from page 1
    (pages after a gap may have landed first, with several writers), or None if that page was
    its last."""
    last = 1
    while last + 1 in landed:
        last += 1
    nxt = landed[last].next_url
    if nxt is None:
        return None
    # Pages after a gap are fetched again (and not landed twice): not seen yet, for loops.
    return Resume(last + 1, nxt, frozenset(landed[n].page_url for n in range(1, last + 1)))


async def unfinished(
    pool: asyncpg.Pool,
    job_id: str,
    requests: Sequence[Request],
    max_url_length: int,
    kind: str,
    detail: str,
) -> list[Failed]:
    """A failure of ``kind`` for each walk of ``requests`` that has not ended, for the page it
    would have fetched next (page 1 if it has not started)."""
    walks = await plan(pool, job_id, requests, max_url_length)
    fails = []
    for r in walks.todo:
        at = walks.resume.get(r)
        page, page_url = (1, r.url) if at is None else (at.page, at.url)
        fails.append(Failed(r.url, kind, detail, None, 0, request=r, page=page, page_url=page_url))
    return fails
