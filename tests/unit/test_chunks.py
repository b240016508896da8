"""The COPY records a chunk lands (pure: no Postgres)."""

from __future__ import annotations

from worker.engine.chunks import Chunk
from worker.engine.outcomes import Failed, Fetched
from worker.engine.requests import Body, Request


def _page(n: int, request: Request | None = None) -> Fetched:
    url = "https://a/items"
    return Fetched(url, 200, b"{}", 5, 1, None, request, (), n, f"{url}?p={n}", f"{url}?p={n + 1}")


def test_pages_of_get_walks_fill_the_page_columns_as_the_general_path_does() -> None:
    """The short path for GET walks gives each page the row `doc_record` builds, in the same
    columns: page number, page URL and next URL after the document's own."""
    chunk = Chunk("job", "src", docs=[_page(1), _page(2)])
    rows, columns = chunk.doc_records()
    assert columns[-3:] == ("page", "page_url", "next_url")
    assert "method" not in columns
    assert rows == [chunk.doc_record(d, requests=False) for d in chunk.docs]
    assert rows[1][-3:] == (2, "https://a/items?p=2", "https://a/items?p=3")


def test_pages_of_a_post_walk_carry_the_request_columns_too() -> None:
    post = Request("https://a/items", "POST", Body.of({"q": 1}))
    chunk = Chunk("job", "src", docs=[_page(1, post)])
    rows, columns = chunk.doc_records()
    assert "method" in columns
    assert columns[-3:] == ("page", "page_url", "next_url")
    assert rows == [chunk.doc_record(chunk.docs[0])]
    assert len(rows[0]) == len(columns)


def test_every_failure_row_carries_the_chunks_profile_name() -> None:
    """A chunk's ``auth`` (the profile's name) fills the auth column of each failure row, on the
    plain path and on the one with request columns; without one it is NULL."""
    post = Request("https://a/p", "POST", Body.of({"q": 1}))
    plain = [
        Failed("https://a/1", "timeout", "", None, 1),
        Failed("https://a/2", "connect", "", None, 1),
    ]
    for fails in (plain, [*plain, Failed(post.url, "timeout", "", None, 1, request=post)]):
        rows, columns = Chunk("job", "src", auth="billing").fail_records(fails)
        at = columns.index("auth")
        assert [r[at] for r in rows] == ["billing"] * len(fails)
        assert all(len(r) == len(columns) for r in rows)
    rows, columns = Chunk("job", "src").fail_records(plain)
    assert [r[columns.index("auth")] for r in rows] == [None, None]
