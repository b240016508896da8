"""Paginated walks, without a network: paths, Link headers, and when a walk stops."""

from __future__ import annotations

import re
import time
from functools import partial

import orjson
import pytest

from worker.engine.pagination import (
    PAGE_PARSE_MAX_BYTES,
    PageSpec,
    Resume,
    Walk,
    lookup,
    next_link,
    parse_path,
    render_path,
)
from worker.engine.requests import Body, Request
from worker.engine.walks import plan_from
from worker.errors import BadJobError, PaginationError, PaginationLoopError
from worker.queue.payload import parse_batch

# -- the path language -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("next", ("next",)),
        ("links.next", ("links", "next")),
        ("data[0].id", ("data", 0, "id")),
        ("data[-1]", ("data", -1)),
        ("[2].cursor", (2, "cursor")),
        ("a[0][1]", ("a", 0, 1)),
        ("meta.next-page_token", ("meta", "next-page_token")),
        ("@odata.nextLink", ("@odata", "nextLink")),
    ],
)
def test_paths_read_as_keys_and_indexes(text: str, steps: tuple[object, ...]) -> None:
    """Dotted keys and [n] indexes become steps, and render back as written."""
    assert parse_path(text) == steps
    assert render_path(parse_path(text)) == text


@pytest.mark.parametrize("text", ["", ".a", "a.", "a..b", "a[x]", "a[", "a]", "a[0]b", "[]"])
def test_bad_paths_are_refused(text: str) -> None:
    """A path that is not dotted keys and indexes is refused with a reason."""
    with pytest.raises(ValueError, match=r"empty|dot|cannot be read"):
        parse_path(text)


def test_lookup_follows_a_path_or_finds_nothing() -> None:
    """A path leads to its value; a missing key, a short list or a wrong type lead to None."""
    doc = {"data": [{"id": "a"}, {"id": "b"}], "meta": {"n": None}}
    assert lookup(doc, ("data", -1, "id")) == "b"
    assert lookup(doc, ("data", 2, "id")) is None
    assert lookup(doc, ("data", "id")) is None
    assert lookup(doc, ("meta", 0)) is None
    assert lookup(doc, ("nope",)) is None


# -- Link headers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (['<https://a/p2>; rel="next"'], "https://a/p2"),
        (['<https://a/p1>; rel="prev", <https://a/p3>; rel="next"'], "https://a/p3"),
        (["<https://a/p3>; rel=next"], "https://a/p3"),
        (['<https://a/p3>; rel="last NEXT"'], "https://a/p3"),
        (['<https://a/p3>; title="a, b; c"; rel="next"'], "https://a/p3"),
        (['<https://a/x?a=1,2;b>; rel="next"'], "https://a/x?a=1,2;b"),
        (['<https://a/p9>; rel="last"', '<https://a/p2>; rel="next"'], "https://a/p2"),
        (['<https://a/p2>; rel="next"; rel="prev"'], "https://a/p2"),
        (['<https://a/p2>; rel="prev"; rel="next"'], None),  # the first rel counts
        (['<https://a/p2>; rel="nextpage"'], None),
        (["<https://a/p2>; rel=nextpage"], None),
        (['<https://a/p2>; rel="next", <https://a/p9>; rel="last"'], "https://a/p2"),
        ([' <https://a/p2> ;rel="next" '], "https://a/p2"),
        (['<https://a/p2>; rel="next"; title="x"'], "https://a/p2"),
        (['<https://a/p2>; rel="next" x'], "https://a/p2"),
        (['<https://a/p2>; rel="prev"'], None),
        ([], None),
        (["garbage"], None),
    ],
)
def test_next_link(headers: list[str], expected: str | None) -> None:
    """The first link whose relation is next, as RFC 8288 reads it."""
    assert next_link(headers) == expected


def test_next_link_is_cheap() -> None:
    """A typical GitHub-style Link header parses in microseconds (it runs once per page)."""
    header = [
        '<https://api.example.com/items?page=3&per_page=100>; rel="next", '
        '<https://api.example.com/items?page=50&per_page=100>; rel="last", '
        '<https://api.example.com/items?page=1&per_page=100>; rel="first", '
        '<https://api.example.com/items?page=1&per_page=100>; rel="prev"'
    ]
    n = 20_000
    started = time.perf_counter()
    for _ in range(n):
        next_link(header)
    per_call = (time.perf_counter() - started) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} µs per Link header"


# -- the walk ------------------------------------------------------------------------------------


def _body(value: object) -> bytes:
    return orjson.dumps(value)


def test_link_walk_resolves_relative_links_and_stops_without_next() -> None:
    """Relative next links are read against the page's URL; no next ends the walk."""
    walk = Walk(PageSpec("link"), "https://a/v1/items?page=1")
    assert walk.next_url(['<?page=2>; rel="next"'], b"{}") == "https://a/v1/items?page=2"
    assert (walk.page, walk.url) == (2, "https://a/v1/items?page=2")
    assert walk.next_url(['<../v1/items?page=3#x>; rel="next"'], b"{}") == (
        "https://a/v1/items?page=3"
    )
    assert walk.next_url(['<https://a/v1/items?page=1>; rel="first"'], b"{}") is None
    assert walk.page == 3


@pytest.mark.parametrize(
    ("given", "followed"),
    [
        ("https://a/v1/items?page=2", "https://a/v1/items?page=2"),  # taken as given
        ("https://a/v1/items?page=2#top", "https://a/v1/items?page=2"),
        ("https://a/v1/items?q=a b&page=2", "https://a/v1/items?q=a+b&page=2"),
        ("https://a/v1/items?q=\u00e9&page=2", "https://a/v1/items?q=%C3%A9&page=2"),
    ],
)
def test_absolute_next_links_on_the_origin_are_normalised_only_when_needed(
    given: str, followed: str
) -> None:
    """A plain absolute link on the first page's origin is followed byte for byte; one with a
    fragment, a space or a non-ASCII character is normalised first, as the fetcher would."""
    walk = Walk(PageSpec("json", path=("next",)), "https://a/v1/items?page=1")
    assert walk.next_url([], _body({"next": given})) == followed


def test_json_walk_reads_the_next_url_from_the_body() -> None:
    """The next URL comes from the path; null, empty or missing ends the walk."""
    walk = Walk(PageSpec("json", ("links", "next")), "https://a/items")
    assert walk.next_url([], _body({"links": {"next": "/items?p=2"}})) == "https://a/items?p=2"
    assert walk.next_url([], _body({"links": {"next": ""}})) is None
    assert Walk(walk.spec, "https://a/items").next_url([], _body({"links": None})) is None
    assert Walk(walk.spec, "https://a/items").next_url([], _body([])) is None


def test_cursor_walk_sets_the_parameter_on_the_first_url() -> None:
    """A cursor replaces its parameter in the first page's URL, keeping the rest of the query."""
    spec = PageSpec("cursor", ("meta", "next"), "after")
    walk = Walk(spec, "https://a/items?limit=50&after=")
    assert walk.next_url([], _body({"meta": {"next": "c 1"}})) == (
        "https://a/items?limit=50&after=c+1"
    )
    assert walk.next_url([], _body({"meta": {"next": 42}})) == "https://a/items?limit=50&after=42"
    assert walk.next_url([], _body({"meta": {"next": None}})) is None
    assert Walk(spec, "https://a/items").next_url([], _body({"meta": {"next": ""}})) is None


@pytest.mark.parametrize(
    ("spec", "body", "message"),
    [
        (PageSpec("json", ("next",)), {"next": 3}, "next URL at next is a number"),
        (PageSpec("json", ("next",)), {"next": {"href": "x"}}, "is an object"),
        (PageSpec("cursor", ("c",), "p"), {"c": True}, "cursor at c is a boolean"),
        (PageSpec("cursor", ("c",), "p"), {"c": [1]}, "is a list"),
    ],
)
def test_values_of_the_wrong_type_fail_the_walk(spec: PageSpec, body: object, message: str) -> None:
    """A next URL or cursor that is not a string (or an integer cursor) is a pagination failure."""
    with pytest.raises(PaginationError, match=message):
        Walk(spec, "https://a/").next_url([], _body(body))


def test_a_body_that_is_not_json_or_too_large_fails_the_walk() -> None:
    """A next URL is only read from JSON, and only from pages up to PAGE_PARSE_MAX_BYTES."""
    spec = PageSpec("json", ("next",))
    with pytest.raises(PaginationError, match="not JSON"):
        Walk(spec, "https://a/").next_url([], b"{")
    big = b'{"pad": "' + b"x" * PAGE_PARSE_MAX_BYTES + b'"}'
    with pytest.raises(PaginationError, match="read from pages up to"):
        Walk(spec, "https://a/").next_url([], big)


def test_link_walks_never_parse_the_body() -> None:
    """Link pagination reads headers only: a body that is not JSON does not matter to it."""
    walk = Walk(PageSpec("link"), "https://a/")
    assert walk.next_url(['<https://a/2>; rel="next"'], b"not json") == "https://a/2"


def test_a_repeated_url_is_a_loop() -> None:
    """A next URL the walk fetched already (the first page included) is pagination_loop."""
    walk = Walk(PageSpec("link"), "https://a/items?page=1")
    walk.next_url(['<https://a/items?page=2>; rel="next"'], b"")
    with pytest.raises(PaginationLoopError, match="page 2 leads back to"):
        walk.next_url(['<https://a/items?page=1#top>; rel="next"'], b"")
    cursor = Walk(PageSpec("cursor", ("c",), "c"), "https://a/items")
    cursor.next_url([], _body({"c": "x"}))
    with pytest.raises(PaginationLoopError):
        cursor.next_url([], _body({"c": "x"}))


@pytest.mark.parametrize(
    "target",
    [
        "https://b/items?page=2",
        "http://a/items?page=2",
        "https://a:8443/items?page=2",
        "//evil.example/items",
    ],
)
def test_next_pages_stay_on_the_first_pages_origin(target: str) -> None:
    """Another host, scheme or port is refused unless the job allows cross_origin."""
    link = [f'<{target}>; rel="next"']
    with pytest.raises(PaginationError, match="another origin"):
        Walk(PageSpec("link"), "https://a/items").next_url(link, b"")
    allowed = Walk(PageSpec("link", cross_origin=True), "https://a/items")
    assert allowed.next_url(link, b"") is not None


def test_the_default_port_is_the_same_origin() -> None:
    """https://a and https://a:443 are one origin; the host's case does not matter."""
    walk = Walk(PageSpec("link"), "https://a/items")
    assert walk.next_url(['<https://A:443/items?page=2>; rel="next"'], b"") is not None


def test_only_http_next_pages_are_followed() -> None:
    """A next link to another scheme is refused even across origins."""
    walk = Walk(PageSpec("link", cross_origin=True), "https://a/items")
    with pytest.raises(PaginationError, match="'file' is not http"):
        walk.next_url(['<file:///etc/passwd>; rel="next"'], b"")


def test_max_pages_stops_the_walk() -> None:
    """The walk answers None once max_pages pages were fed, the first included."""
    walk = Walk(PageSpec("link", max_pages=3), "https://a/p/1")
    urls = [walk.next_url([f'<https://a/p/{n}>; rel="next"'], b"") for n in range(2, 6)]
    assert urls == ["https://a/p/2", "https://a/p/3", None, None]
    assert walk.page == 3
    one = Walk(PageSpec("link", max_pages=1), "https://a/p/1")
    assert one.next_url(['<https://a/p/2>; rel="next"'], b"") is None


# -- the payload field -----------------------------------------------------------------------------


def _paginate(paginate: object, *, max_pages: int | None = 1000) -> PageSpec:
    batch = parse_batch(
        (),
        {"urls": ["https://a/"], "paginate": paginate},
        max_urls=5,
        job_id="j",
        max_pages=max_pages,
    )
    assert batch.paginate is not None
    return batch.paginate.spec()


def test_each_style_becomes_a_spec() -> None:
    """The three styles, with max_pages and cross_origin, reach the engine as a PageSpec."""
    assert _paginate({"next": "link"}) == PageSpec("link")
    assert _paginate({"next": "json", "path": "a[0].b", "max_pages": 7}) == PageSpec(
        "json", ("a", 0, "b"), max_pages=7
    )
    assert _paginate({"cursor": {"path": "m.c", "param": "after"}, "cross_origin": True}) == (
        PageSpec("cursor", ("m", "c"), "after", cross_origin=True)
    )


@pytest.mark.parametrize(
    ("paginate", "message"),
    [
        ({}, "needs either 'next'"),
        ({"next": "link", "cursor": {"path": "c", "param": "c"}}, "needs either"),
        ({"next": "json"}, "'paginate.path' is required"),
        ({"next": "link", "path": "a"}, 'goes with "next": "json" only'),
        ({"next": "json", "path": "a..b"}, "'paginate.path' is not a path"),
        ({"cursor": {"path": "c"}}, "'paginate.cursor.param' is required"),
        ({"cursor": {"path": "c", "param": ""}}, "'paginate.cursor.param' is empty"),
        ({"cursor": {"path": "[x]", "param": "p"}}, "'paginate.cursor.path' is not a path"),
        ({"next": "page"}, "'paginate.next' must be 'link' or 'json'"),
        ({"next": "link", "max_pages": 0}, "'paginate.max_pages' must be at least 1"),
        ({"next": "link", "max_pages": 1001}, "over the limit of 1000 \\(HARVESTER_MAX_PAGES\\)"),
        ({"next": "link", "max_pages": "5"}, "'paginate.max_pages' must be an integer"),
        ({"next": "link", "depth": 1}, "'paginate' has an unknown field 'depth'; allowed: next"),
        ("link", "'paginate' must be an object, got str"),
    ],
)
def test_bad_paginate_fields_say_what_is_wrong(paginate: object, message: str) -> None:
    """Each malformed paginate refuses the job with a plain sentence naming the field."""
    with pytest.raises(BadJobError, match=message):
        _paginate(paginate)


# -- where an interrupted walk goes on -----------------------------------------------------------


def _row(url: str, page: int, nxt: str | None = None, failed: bool = False) -> dict[str, object]:
    return {
        "url": url,
        "page": page,
        "page_url": f"{url}?p={page}",
        "next_url": nxt,
        "failed": failed,
    }


def test_plan_resumes_after_the_unbroken_run_of_pages() -> None:
    """Walks not started are done from page 1; ended ones not at all; interrupted ones go on
    from the first missing page, with only the pages before it counted as seen."""
    rows = [
        _row("a", 1, "a?p=2"),
        _row("a", 2, "a?p=3"),  # a: 1, 2 landed, 3 not yet
        _row("b", 1, "b?p=2"),
        _row("b", 2, None),  # b: ended
        _row("c", 1, "c?p=2"),
        _row("c", 3, "c?p=4"),  # c: 3 landed before 2
        _row("d", 1, "d?p=2"),
        _row("d", 2, failed=True),  # d: ended in a failure
        _row("e", 2, "e?p=3"),  # e: page 1 missing
    ]
    requests = [Request(u) for u in ["a", "b", "c", "d", "e", "f", "a"]]
    plan = plan_from(rows, requests, 8192)
    assert [r.url for r in plan.todo] == ["a", "c", "e", "f"]
    assert plan.resume == {
        Request("a"): Resume(3, "a?p=3", frozenset({"a?p=1", "a?p=2"})),
        Request("c"): Resume(2, "c?p=2", frozenset({"c?p=1"})),
    }
    # Another request of the same URL (a POST with a body) is another walk.
    post = Request("a", "POST", Body.of({"q": 1}))
    assert plan_from(rows, [post], 8192).todo == [post]


def test_a_resumed_walk_counts_its_pages_and_knows_its_loops() -> None:
    """A Walk resumed at page 3 numbers on from there and refuses the pages it had seen."""
    resume = Resume(3, "https://a/p/3", frozenset({"https://a/p/2"}))
    walk = Walk(PageSpec("link", max_pages=4), "https://a/p/1", resume)
    for seen in ("https://a/p/2", "https://a/p/3", "https://a/p/1"):
        with pytest.raises(PaginationLoopError):
            walk.next_url([f'<{seen}>; rel="next"'], b"")
    assert walk.next_url(['<https://a/p/4>; rel="next"'], b"") == "https://a/p/4"
    assert walk.page == 4
    assert walk.next_url(['<https://a/p/5>; rel="next"'], b"") is None  # max_pages


def test_a_walk_cleans_next_urls_before_judging_them() -> None:
    """A key the API echoed into its next links is taken off before the loop check and before
    a refusal names the URL: a link back to page 1 with the key is still a loop, and a link to
    another origin is named without the key."""
    strip = partial(re.sub, r"[?&]key=[^&]*", "")
    walk = Walk(PageSpec("link"), "https://api.test/items", clean=strip)
    back = ('<https://api.test/items?key=s3cret>; rel="next"',)
    with pytest.raises(PaginationLoopError) as loop:
        walk.next_url(back, b"{}")
    assert "s3cret" not in str(loop.value.detail) + str(loop.value.target)
    away = Walk(PageSpec("link"), "https://api.test/items", clean=strip)
    with pytest.raises(PaginationError) as elsewhere:
        away.next_url(('<https://other.test/items?key=s3cret>; rel="next"',), b"{}")
    assert elsewhere.value.target == "https://other.test/items"
