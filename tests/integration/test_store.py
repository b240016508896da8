"""The store against a real Postgres: chunked COPY, idempotency, refused bodies."""

from __future__ import annotations

import asyncpg
import pytest

from worker.engine import store
from worker.engine.chunks import Chunk
from worker.engine.outcomes import Failed, Fetched
from worker.engine.writes import write_chunk
from worker.errors import StoreError
from worker.settings import Settings


def _doc(url: str, body: bytes = b'{"a": 1}') -> Fetched:
    return Fetched(url=url, status=200, body=body, elapsed_ms=5, attempts=1)


def _fail(url: str, kind: str = "http_status") -> Failed:
    return Failed(url=url, kind=kind, detail="HTTP 404", status=404, attempts=1)


async def test_chunk_lands_documents_and_failures(pool: asyncpg.Pool) -> None:
    """Documents keep their JSON and the URL as given; failures keep kind and status."""
    w = await write_chunk(
        pool,
        Chunk(
            "j1",
            "src",
            [_doc(" http://a/x?b=1&a=2 "), _doc("http://b", b"[1,2]")],
            [_fail("http://c")],
        ),
        max_url_length=8192,
    )
    assert (w.documents, w.failures) == (2, 1)
    rows = await pool.fetch("SELECT url, source, status, body FROM documents ORDER BY id")
    assert [(r["url"], r["source"], r["status"], r["body"]) for r in rows] == [
        (" http://a/x?b=1&a=2 ", "src", 200, {"a": 1}),
        ("http://b", "src", 200, [1, 2]),
    ]
    fail = await pool.fetchrow(
        "SELECT job_id, url, error, status, attempts, detail FROM fetch_failures"
    )
    assert dict(fail) == {
        "job_id": "j1",
        "url": "http://c",
        "error": "http_status",
        "status": 404,
        "attempts": 1,
        "detail": "HTTP 404",
    }


async def test_writing_the_same_chunk_twice_adds_nothing(pool: asyncpg.Pool) -> None:
    """ON CONFLICT on (job_id, url) makes a re-run idempotent."""
    docs, fails = [_doc("http://a"), _doc("http://b")], [_fail("http://c")]
    await write_chunk(pool, Chunk("j1", None, docs, fails), max_url_length=8192)
    again = await write_chunk(pool, Chunk("j1", None, docs, fails), max_url_length=8192)
    assert (again.documents, again.failures) == (0, 0)
    assert await pool.fetchval("SELECT count(*) FROM documents") == 2
    assert await pool.fetchval("SELECT count(*) FROM fetch_failures") == 1


async def test_same_url_in_another_job_gets_its_own_row(pool: asyncpg.Pool) -> None:
    """Uniqueness is per job: job B's copy of a URL is a new row."""
    await write_chunk(pool, Chunk("A", None, [_doc("http://a")], []), max_url_length=8192)
    w = await write_chunk(pool, Chunk("B", None, [_doc("http://a")], []), max_url_length=8192)
    assert w.documents == 1


async def test_very_long_urls_land(pool: asyncpg.Pool) -> None:
    """URLs longer than a btree entry can hold still land, uniquely."""
    url = "http://a/" + "x" * 6000
    await write_chunk(pool, Chunk("j", None, [_doc(url)], [_fail(url + "y")]), max_url_length=8192)
    again = await write_chunk(pool, Chunk("j", None, [_doc(url)], []), max_url_length=8192)
    assert again.documents == 0
    assert await pool.fetchval("SELECT length(url) FROM documents") == len(url)


async def test_body_postgres_refuses_becomes_a_failure_not_a_failed_chunk(
    pool: asyncpg.Pool,
) -> None:
    """A body jsonb refuses turns into an invalid_json failure; the rest of the chunk lands."""
    bad = _doc("http://bad", b'{"s": "\\u0000"}')  # passes nothing in real life; forced here
    w = await write_chunk(
        pool,
        Chunk("j", None, [_doc("http://ok1"), bad, _doc("http://ok2")], [_fail("http://f")]),
        max_url_length=8192,
    )
    assert w.documents == 2
    assert [f.url for f in w.refused] == ["http://bad"]
    kinds = dict(await pool.fetch("SELECT url, error FROM fetch_failures"))
    assert kinds == {"http://bad": "invalid_json", "http://f": "http_status"}


async def test_failures_keep_the_profile_name_on_every_write_path(pool: asyncpg.Pool) -> None:
    """The chunk's ``auth`` lands in fetch_failures.auth by direct COPY, through staging (a
    re-run whose document is there already) and row by row (a body Postgres refuses)."""
    await write_chunk(pool, Chunk("j", None, [_doc("http://d")], []), max_url_length=8192)
    chunks = {
        "direct": Chunk("j", None, [], [_fail("http://direct")], auth="billing"),
        "staged": Chunk("j", None, [_doc("http://d")], [_fail("http://staged")], auth="billing"),
        "rows": Chunk("j", None, [_doc("http://bad", b'{"s": "\\u0000"}')], [], auth="maps"),
    }
    for chunk in chunks.values():
        await write_chunk(pool, chunk, max_url_length=8192)
    assert dict(await pool.fetch("SELECT url, auth FROM fetch_failures")) == {
        "http://direct": "billing",
        "http://staged": "billing",
        "http://bad": "maps",
    }


async def test_existing_requests_lists_both_tables(pool: asyncpg.Pool) -> None:
    """An interrupted job's landed URLs are known, from documents and failures alike."""
    await write_chunk(
        pool, Chunk("j", None, [_doc("http://a")], [_fail("http://b")]), max_url_length=8192
    )
    await write_chunk(pool, Chunk("other", None, [_doc("http://c")], []), max_url_length=8192)
    assert await store.existing_requests(pool, "j") == {
        ("http://a", "GET", None),
        ("http://b", "GET", None),
    }


async def test_unreachable_database_is_a_store_error(make_settings) -> None:  # type: ignore[no-untyped-def]
    """A bad DATABASE_URL fails at pool creation with StoreError naming the URL, not an asyncpg
    error."""
    from worker.devtools.embedded import free_port

    s: Settings = make_settings(
        database_url=f"postgresql://x@127.0.0.1:{free_port()}/x", connect_timeout=2
    )
    with pytest.raises(StoreError, match=r"^Postgres is unavailable at postgresql://\*\*\*@127"):
        await store.create_pool(s)


async def test_a_released_connection_is_rolled_back_but_not_reset(make_settings) -> None:  # type: ignore[no-untyped-def]
    """Releasing a connection sends no reset query (asyncpg's default is a round trip of
    advisory unlock, CLOSE ALL, UNLISTEN and RESET ALL per use, for state harvester never
    makes): a session setting survives it. A transaction left open is still rolled back."""
    p = await store.create_pool(make_settings(db_pool_min=1, db_pool_max=1))
    try:
        async with p.acquire() as conn:
            await conn.execute("SET application_name = 'left-behind'")
            # Left open on purpose: asyncpg logs "Resetting connection with an active
            # transaction" at release, and rolls it back.
            await conn.execute("BEGIN")
            await conn.execute("CREATE TEMP TABLE harvester_left_open (x int)")
        async with p.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "left-behind"
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.harvester_left_open')") is None
    finally:
        await store.close_pool(p)
