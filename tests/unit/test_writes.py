"""The COPY records a chunk lands (pure: no Postgres)."""

from __future__ import annotations

from worker.engine.outcomes import Fetched
from worker.engine.requests import Body, Request
from worker.engine.writes import Chunk


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
