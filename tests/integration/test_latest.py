"""latest_documents against a real Postgres: one row per request, the newest copy, kept by the
transaction that lands it, under concurrent jobs, re-runs, refused bodies, retention and the
migration's backfill."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg

from tests.helpers import Services, migrations_up_to, scratch_database
from tests.helpers.upstream import Upstream
from worker.engine import pipeline
from worker.engine.chunks import Chunk
from worker.engine.fetch import Fetcher
from worker.engine.migrate import migrate
from worker.engine.outcomes import Fetched
from worker.engine.polling import content_hash
from worker.engine.requests import Body, Request
from worker.engine.writes import write_chunk
from worker.scheduling.retention import delete_expired
from worker.settings import Settings

DAY = 86_400.0

# What latest_documents must say: the newest copy of each request, computed the slow way.
_NEWEST = """
SELECT DISTINCT ON (url, method, body_hash, COALESCE(page, 0)) id FROM documents
ORDER BY url, method, body_hash, COALESCE(page, 0), fetched_at DESC, id DESC
"""


def _doc(url: str, body: bytes = b'{"a": 1}', **fields: object) -> Fetched:
    return Fetched(url, 200, body, 1, 1, **fields)  # type: ignore[arg-type]


async def _write(pool: asyncpg.Pool, job_id: str, docs: list[Fetched]) -> None:
    await write_chunk(pool, Chunk(job_id, "s", docs), max_url_length=8192)


async def _current(pool: asyncpg.Pool) -> dict[str, str]:
    """URL -> job id of its current copy, for GETs; one row per URL is asserted."""
    rows = await pool.fetch("SELECT url, job_id FROM latest_documents WHERE method = 'GET'")
    assert len(rows) == len({r["url"] for r in rows})
    return {r["url"]: r["job_id"] for r in rows}


async def _matches_newest(pool: asyncpg.Pool) -> None:
    newest = {r["id"] for r in await pool.fetch(_NEWEST)}
    refs = [r["document_id"] for r in await pool.fetch("SELECT document_id FROM latest_documents")]
    assert len(refs) == len(set(refs)) == len(newest)
    assert set(refs) == newest


async def test_two_jobs_fetching_the_same_urls_at_once_leave_one_row_per_url(
    upstream: Upstream,
    pool: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    make_fetcher: Callable[[Settings], Fetcher],
) -> None:
    """Two jobs of the same 300 URLs run together in small chunks: one row per URL, each the
    URL's newest document; a later job then takes every URL over."""
    settings = make_settings(copy_chunk_rows=7, writers=2)
    urls = [upstream.url(f"/json/{i}") for i in range(300)]

    def run(job_id: str, order: list[str]) -> pipeline.Batch:
        return pipeline.Batch(job_id=job_id, requests=[Request(u) for u in order], source="s")

    async def go(job_id: str, order: list[str]) -> None:
        batch = run(job_id, order)
        summary = await pipeline.run(
            batch, fetcher=make_fetcher(settings), pool=pool, settings=settings
        )
        assert summary.documents == len(urls)

    await asyncio.gather(go("a", urls), go("b", urls[::-1]))
    assert set((await _current(pool)).keys()) == set(urls)
    await _matches_newest(pool)

    await go("c", urls)
    assert set((await _current(pool)).values()) == {"c"}
    await _matches_newest(pool)


async def test_chunks_upserting_overlapping_urls_in_opposite_orders_never_deadlock(
    pool: asyncpg.Pool,
) -> None:
    """Many pairs of chunks of different jobs land the same URLs, one reversed, at once: all
    land (no deadlock), and each URL's row is its newest copy."""
    urls = [f"http://x/{i}" for i in range(200)]
    for n in range(10):
        await asyncio.gather(
            _write(pool, f"p{n}", [_doc(u) for u in urls]),
            _write(pool, f"q{n}", [_doc(u) for u in reversed(urls)]),
        )
    assert await pool.fetchval("SELECT count(*) FROM documents") == 20 * len(urls)
    assert len(await _current(pool)) == len(urls)
    await _matches_newest(pool)


async def test_a_later_fetch_replaces_the_current_copy_and_its_hash(pool: asyncpg.Pool) -> None:
    """The body, job, source and content hash of the latest fetch are what the view shows;
    the older copy stays in documents."""
    await _write(pool, "j1", [_doc("http://x/a", b'{"v": 1}')])
    await _write(pool, "j2", [_doc("http://x/a", b'{"v": 2}')])
    row = await pool.fetchrow(
        "SELECT job_id, source, body, content_hash FROM latest_documents WHERE url = $1",
        "http://x/a",
    )
    assert (row["job_id"], row["source"], row["body"]) == ("j2", "s", {"v": 2})
    assert row["content_hash"] == content_hash(b'{"v": 2}')
    assert await pool.fetchval("SELECT count(*) FROM documents") == 2


async def test_a_rerun_through_staging_keeps_the_current_copy(pool: asyncpg.Pool) -> None:
    """A chunk written again (some rows there already, a URL twice: the staging path) adds the
    new URL's row and leaves the landed ones pointing at their documents."""
    await _write(pool, "j", [_doc("http://x/a"), _doc("http://x/b")])
    before = dict(await pool.fetch("SELECT url, document_id FROM latest_document_refs"))
    again = [_doc("http://x/a"), _doc("http://x/b"), _doc("http://x/c"), _doc("http://x/c")]
    await _write(pool, "j", again)
    after = dict(await pool.fetch("SELECT url, document_id FROM latest_document_refs"))
    assert {u: after[u] for u in before} == before
    assert set(after) == {"http://x/a", "http://x/b", "http://x/c"}
    await _matches_newest(pool)


async def test_a_refused_body_leaves_the_previous_copy_current(pool: asyncpg.Pool) -> None:
    """Row by row (a body Postgres refuses): the refused URL keeps its earlier copy, the rest
    of the chunk becomes current."""
    await _write(pool, "j1", [_doc("http://x/bad"), _doc("http://x/ok")])
    await _write(pool, "j2", [_doc("http://x/bad", b'{"s": "\\u0000"}'), _doc("http://x/ok")])
    assert await _current(pool) == {"http://x/bad": "j1", "http://x/ok": "j2"}


async def test_requests_and_pages_each_have_a_current_copy(pool: asyncpg.Pool) -> None:
    """A GET, a POST with a body and the pages of a walk of one URL are rows of their own."""
    url = "http://x/search"
    post = Request(url, "POST", Body.of({"q": "shoes"}))
    pages = [_doc(url, page=n, page_url=f"{url}?p={n}") for n in (1, 2)]
    await _write(pool, "j1", [_doc(url), _doc(url, request=post)])
    await _write(pool, "j2", [_doc(url, request=post), *pages])
    rows = await pool.fetch(
        "SELECT method, request, page, job_id FROM latest_documents WHERE url = $1"
        " ORDER BY method, page NULLS FIRST",
        url,
    )
    assert [(r["method"], r["request"], r["page"], r["job_id"]) for r in rows] == [
        ("GET", None, None, "j1"),
        ("GET", None, 1, "j2"),
        ("GET", None, 2, "j2"),
        ("POST", {"q": "shoes"}, None, "j2"),
    ]


async def test_retention_keeps_every_current_copy(pool: asyncpg.Pool) -> None:
    """Old copies past the cutoff go; a URL's current copy stays, however old."""
    await _write(pool, "old", [_doc("http://x/a"), _doc("http://x/b")])
    await _write(pool, "new", [_doc("http://x/a")])
    await pool.execute("UPDATE documents SET fetched_at = fetched_at - interval '30 days'")
    await pool.execute(
        "UPDATE latest_document_refs SET fetched_at = fetched_at - interval '30 days'"
    )

    result = await delete_expired(pool, days=7, batch_rows=1)

    assert result.documents == 1  # old's copy of a
    assert await _current(pool) == {"http://x/a": "new", "http://x/b": "old"}
    rows = await pool.fetch("SELECT job_id, url FROM documents ORDER BY url")
    assert [(r["job_id"], r["url"]) for r in rows] == [("new", "http://x/a"), ("old", "http://x/b")]


async def test_011_backfills_the_newest_copy_of_each_request(
    services: Services, tmp_path: Path
) -> None:
    """Migrating documents of version 010 fills latest_document_refs with each request's (and
    page's) newest row, ties broken by id; later landings keep it current."""
    insert = (
        "INSERT INTO documents (job_id, url, status, body, elapsed_ms, attempts, method, page,"
        " fetched_at) VALUES ($1, $2, 200, $3::jsonb, 1, 1, $4, $5, $6::text::timestamptz)"
    )
    t1, t2 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
    rows = [
        ("j1", "http://a/x", '{"v": 1}', "GET", None, t1),
        ("j2", "http://a/x", '{"v": 2}', "GET", None, t2),
        ("j0", "http://a/x", '{"v": 0}', "GET", None, t1),
        ("j1", "http://a/x", '{"v": 3}', "POST", None, t1),
        ("j1", "http://a/x", '{"v": 4}', "GET", 1, t1),
        ("j3", "http://a/y", '{"v": 5}', "GET", None, t1),
        ("j4", "http://a/y", '{"v": 6}', "GET", None, t1),  # same time: the greater id wins
    ]
    async with scratch_database(services.database_url, "harvester_mig") as url:
        await migrate(url, migrations_up_to(tmp_path, 10))
        conn = await asyncpg.connect(url)
        try:
            for row in rows:
                await conn.execute(insert, *row)
            applied = await migrate(url, migrations_up_to(tmp_path, 11))
            got = await conn.fetch(
                "SELECT url, method, page, job_id, body, content_hash FROM latest_documents"
                " ORDER BY url, method, page NULLS FIRST"
            )
        finally:
            await conn.close()
    assert [m.version for m in applied] == [11]
    assert [(r["url"], r["method"], r["page"], r["job_id"]) for r in got] == [
        ("http://a/x", "GET", None, "j2"),
        ("http://a/x", "GET", 1, "j1"),
        ("http://a/x", "POST", None, "j1"),
        ("http://a/y", "GET", None, "j4"),
    ]
    assert {r["content_hash"] for r in got} == {None}  # the bodies as served are not kept
