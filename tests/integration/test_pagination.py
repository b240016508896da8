"""Paginated walks against a real upstream and Postgres: each page its own row, and every way a
walk ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker

from tests.helpers.upstream import Upstream
from worker.engine import pipeline
from worker.engine.chunks import Chunk
from worker.engine.fetch import Fetcher
from worker.engine.outcomes import BatchSummary, Fetched
from worker.engine.pagination import PageSpec
from worker.engine.requests import Body, Request
from worker.engine.writes import write_chunk
from worker.queue.client import enqueue_batch
from worker.queue.payload import make_batch
from worker.scheduling.replay import replay_failures
from worker.settings import Settings

Walk = Callable[..., Awaitable[BatchSummary]]


@pytest.fixture
def walk(
    pool: asyncpg.Pool, settings: Settings, make_fetcher: Callable[[Settings], Fetcher]
) -> Walk:
    """pipeline.run of one paginated batch on the test pool."""

    def run(
        job_id: str, urls: list[str], spec: PageSpec, **options: Any
    ) -> Awaitable[BatchSummary]:
        requests = [u if isinstance(u, Request) else Request(u) for u in urls]
        batch = pipeline.Batch(
            job_id=job_id, requests=requests, source=None, paginate=spec, **options
        )
        return pipeline.run(batch, fetcher=make_fetcher(settings), pool=pool, settings=settings)

    return run


@pytest.fixture
async def other() -> AsyncIterator[Upstream]:
    """A second upstream: another origin (another port)."""
    async with Upstream().serving() as up:
        yield up


async def _pages(pool: asyncpg.Pool, job_id: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT url, page, page_url, next_url, body->>'page' AS n FROM documents "
        "WHERE job_id = $1 ORDER BY page",
        job_id,
    )
    return [tuple(r) for r in rows]


async def _failures(pool: asyncpg.Pool, job_id: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT url, error, page, page_url FROM fetch_failures WHERE job_id = $1", job_id
    )
    return [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("style", "spec"),
    [
        ("link", PageSpec("link")),
        ("json", PageSpec("json", ("links", "next"))),
        ("cursor", PageSpec("cursor", ("meta", "next_cursor"), "cursor")),
    ],
)
async def test_each_style_lands_every_page_as_its_own_row(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk, style: str, spec: PageSpec
) -> None:
    """Pages 1..n land numbered, with their URL, the enqueued URL and the next page's URL."""
    first = upstream.url(f"/pages/{style}/a?n=4")
    summary = await walk(f"w-{style}", [first], spec)
    assert (summary.documents, summary.pages, summary.failures) == (4, 4, {})
    rows = await _pages(pool, f"w-{style}")
    assert [(r[0], r[1], r[4]) for r in rows] == [(first, n, str(n)) for n in range(1, 5)]
    assert rows[0][2] == first
    assert [r[3] for r in rows[:-1]] == [r[2] for r in rows[1:]]  # each next is the next's URL
    assert rows[-1][3] is None
    param = "cursor=c3" if style == "cursor" else "page=3"
    assert param in rows[2][2]


async def test_each_walk_of_a_batch_fetches_its_pages_in_order(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """Several walks in a batch: each fetches its own pages one after another, in order."""
    urls = [upstream.url(f"/pages/link/r{i}?n=5") for i in range(6)]
    summary = await walk("w-many", urls, PageSpec("link"))
    assert (summary.documents, summary.distinct_urls) == (30, 6)
    for i in range(6):
        pages = [h.path for h in upstream.hits if f"/r{i}?" in h.path]
        assert [p.rsplit("page=", 1)[-1] if "page=" in p else "1" for p in pages] == list("12345")


async def test_a_loop_stops_the_walk_with_pagination_loop(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """A next link back to a page fetched already ends the walk; the pages before it stay."""
    first = upstream.url("/pages/link/l?n=9&loop_at=3&page=1")
    summary = await walk("w-loop", [first], PageSpec("link"))
    assert (summary.documents, summary.failures) == (3, {"pagination_loop": 1})
    assert [r[1] for r in await _pages(pool, "w-loop")] == [1, 2, 3]
    [(url, kind, page, page_url)] = await _failures(pool, "w-loop")
    assert (url, kind, page) == (first, "pagination_loop", 4)
    assert page_url is not None
    assert "page=1" in page_url
    assert len(upstream.hits) == 3


async def test_a_next_link_to_another_origin_is_refused_unless_allowed(
    upstream: Upstream, other: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """Next pages stay on the first page's origin; cross_origin lets a walk leave it."""
    first = upstream.url(f"/pages/link/x?n=3&next_base={other.base}")
    summary = await walk("w-cross", [first], PageSpec("link"))
    assert (summary.documents, summary.failures) == (1, {"pagination": 1})
    [(_, kind, page, page_url)] = await _failures(pool, "w-cross")
    assert (kind, page) == ("pagination", 2)
    assert page_url.startswith(other.base)
    assert other.hits == []

    allowed = await walk("w-cross-ok", [first], PageSpec("link", cross_origin=True))
    assert (allowed.documents, allowed.failures) == (3, {})
    assert len(other.hits) == 2


async def test_a_page_failing_mid_walk_ends_it_and_keeps_the_pages_before(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """Page 3 answers 404: pages 1 and 2 stay, page 3 is a failure row, page 4 is never asked."""
    first = upstream.url("/pages/json/f?n=5&fail_at=3")
    summary = await walk("w-fail", [first], PageSpec("json", ("links", "next")))
    assert (summary.documents, summary.failures) == (2, {"http_status": 1})
    assert [r[1] for r in await _pages(pool, "w-fail")] == [1, 2]
    [(url, kind, page, page_url)] = await _failures(pool, "w-fail")
    assert (url, kind, page) == (first, "http_status", 3)
    assert "page=3" in page_url
    assert len(upstream.hits) == 3


async def test_max_pages_stops_the_walk_without_a_failure(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """A walk that reaches max_pages stops there: no failure row, no further request."""
    summary = await walk(
        "w-max", [upstream.url("/pages/link/m?n=50")], PageSpec("link", max_pages=4)
    )
    assert (summary.documents, summary.failures) == (4, {})
    assert len(upstream.hits) == 4


async def test_a_thousand_page_walk(upstream: Upstream, pool: asyncpg.Pool, walk: Walk) -> None:
    """A walk of 1,000 pages (the HARVESTER_MAX_PAGES default) lands every page once."""
    started = time.monotonic()
    summary = await walk(
        "w-1000", [upstream.url("/pages/link/k?n=1000")], PageSpec("link", max_pages=1000)
    )
    assert (summary.documents, summary.pages, summary.failures) == (1000, 1000, {})
    counts = await pool.fetchrow(
        "SELECT count(*) AS n, count(DISTINCT page) AS pages, max(page) AS last "
        "FROM documents WHERE job_id = 'w-1000'"
    )
    assert tuple(counts) == (1000, 1000, 1000)
    assert time.monotonic() - started < 60


async def test_a_next_link_to_a_private_address_is_blocked(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """Next pages pass the SSRF guard like any URL: the metadata address is never connected."""
    first = upstream.url("/pages/link/g?n=3&next_base=http://169.254.169.254")
    summary = await walk("w-guard", [first], PageSpec("link", cross_origin=True))
    assert (summary.documents, summary.failures) == (1, {"blocked": 1})
    [(_, kind, page, page_url)] = await _failures(pool, "w-guard")
    assert (kind, page) == ("blocked", 2)
    assert page_url.startswith("http://169.254.169.254/")


async def test_an_interrupted_walk_goes_on_from_its_first_missing_page(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """Pages 1 and 3 landed (3 before 2, as several writers may): a re-run fetches from page
    2 on, and no page lands twice."""
    first = upstream.url("/pages/link/i?n=5")

    def page(n: int) -> Fetched:
        url = first if n == 1 else f"{first}&page={n}"
        return Fetched(
            first, 200, b"{}", 1, 1, page=n, page_url=url, next_url=f"{first}&page={n + 1}"
        )

    await write_chunk(pool, Chunk("w-resume", None, docs=[page(1), page(3)]), max_url_length=8192)
    summary = await walk("w-resume", [first], PageSpec("link"))
    assert summary.documents == 3  # pages 2, 4 and 5; page 3 was there
    assert [r[1] for r in await _pages(pool, "w-resume")] == [1, 2, 3, 4, 5]
    assert [h.path.rsplit("=", 1)[-1] for h in upstream.hits] == ["2", "3", "4", "5"]

    again = await walk("w-resume", [first], PageSpec("link"))
    assert (again.already_done, again.documents) == (1, 0)
    assert len(upstream.hits) == 4


async def test_the_deadline_mid_walk_records_the_next_page(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """On the job's last try, a walk cut by the deadline gets a deadline failure for the page
    it was fetching; before that, the run raises and the next try goes on from there."""
    first = upstream.url("/pages/link/d?n=4&gate_at=3")
    spec = PageSpec("link")
    with pytest.raises(pipeline.DeadlineError):
        await walk("w-dead", [first], spec, deadline=time.monotonic() + 1.0)
    assert [r[1] for r in await _pages(pool, "w-dead")] == [1, 2]

    summary = await walk(
        "w-dead", [first], spec, deadline=time.monotonic() + 1.0, record_unfinished=True
    )
    assert summary.failures == {"deadline": 1}
    [(_, kind, page, page_url)] = await _failures(pool, "w-dead")
    assert (kind, page) == ("deadline", 3)
    assert page_url.endswith("page=3")
    # Each try asked for page 3 (the second went on from there, not from page 1).
    assert [h.path.rsplit("=", 1)[-1] for h in upstream.hits[2:]] == ["3", "3"]


async def test_a_paginated_job_through_the_worker(
    upstream: Upstream,
    pool: asyncpg.Pool,
    arq_queue: ArqRedis,
    make_worker: Callable[..., Worker],
) -> None:
    """The job's paginate field reaches the engine; the summary counts the pages."""
    batch = make_batch(
        urls=[upstream.url("/pages/cursor/j?n=3"), upstream.url("/json/plain")],
        paginate={"cursor": {"path": "meta.next_cursor", "param": "cursor"}},
    )
    await enqueue_batch(arq_queue, batch, job_id="paged-job")
    worker = make_worker()
    await worker.main()
    assert worker.jobs_complete == 1
    rows = await pool.fetch(
        "SELECT url, page FROM documents WHERE job_id = 'paged-job' ORDER BY url, page"
    )
    assert [(r["url"].rsplit("/", 1)[-1], r["page"]) for r in rows] == [
        ("plain", 1),  # /json/plain sorts before /pages/...
        ("j?n=3", 1),
        ("j?n=3", 2),
        ("j?n=3", 3),
    ]


async def test_failures_of_walks_are_not_replayed(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk, arq_queue: ArqRedis
) -> None:
    """A replay would fetch the enqueued URL without its walk: failures of pages are left out."""
    await walk("w-replay", [upstream.url("/pages/link/t?n=3&fail_at=2")], PageSpec("link"))
    await pool.execute(
        "INSERT INTO fetch_failures (job_id, url, error, attempts) VALUES ('j', 'http://x/', 'timeout', 1)"
    )
    result = await replay_failures(
        pool, arq_queue, kinds=["http_status", "timeout"], batch_size=10, limit=10
    )
    assert result.urls == 1
    assert await pool.fetchval("SELECT replayed_by FROM fetch_failures WHERE page = 2") is None


async def test_urls_the_fetcher_refuses_fail_as_their_first_page(
    pool: asyncpg.Pool, walk: Walk
) -> None:
    """An unusable URL in a paginated batch is a failure of page 1, and the batch goes on."""
    summary = await walk("w-bad", ["nope", "http://[::1", " ftp://x/ "], PageSpec("link"))
    assert summary.failures == {"invalid_url": 3}
    rows = await _failures(pool, "w-bad")
    assert sorted((r[1], r[2]) for r in rows) == [("invalid_url", 1)] * 3


async def test_a_post_walk_sends_its_body_with_every_page(
    upstream: Upstream, pool: asyncpg.Pool, walk: Walk
) -> None:
    """Pages after the first are asked with the first request's method and body, and every
    page is a row of that request (its method and body hash)."""
    first = Request(upstream.url("/pages/json/p?n=3"), "POST", Body.of({"q": "x"}))
    summary = await walk("w-post", [first], PageSpec("json", ("links", "next")))
    assert (summary.documents, summary.failures) == (3, {})
    assert [h.method for h in upstream.hits] == ["POST"] * 3
    rows = await pool.fetch(
        "SELECT DISTINCT url, method, body_hash FROM documents WHERE job_id = 'w-post'"
    )
    assert [tuple(r) for r in rows] == [(first.url, "POST", first.body_hash)]
