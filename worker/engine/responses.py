"""What an answer must be to land: a final response read within the body cap, of a JSON content
type, with a 2xx status (or a 304 to a conditional request); and where a redirect goes next.

`worker.engine.fetch` makes the requests and follows the hops; these functions judge one
response each and raise the `FetchError` it is, so the fetcher's retry policy sees one error
tree whatever went wrong.
"""

from __future__ import annotations

from typing import Final

import aiohttp
from yarl import URL

from worker.engine.outcomes import ResponseMeta, Validators
from worker.engine.session import parse_retry_after
from worker.errors import (
    TRANSIENT_STATUSES,
    ContentTypeError,
    HTTPStatusError,
    RedirectError,
    TooLargeError,
)

_JSON_TYPES: Final = ("application/json", "text/json", "text/plain", "application/octet-stream")
# Content-Type headers, as sent, that parse to an accepted type: most answers send one of these.
_USUAL_JSON_TYPES: Final = frozenset(
    {"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"}
)

# What one attempt got: status, body, cache headers (conditional requests), Link headers.
Answer = tuple[int, bytes, ResponseMeta | None, tuple[str, ...]]


async def read_answer(
    resp: aiohttp.ClientResponse, validators: Validators | None, links: bool, limit: int
) -> Answer:
    """A final (not redirecting) response: a 304 to a conditional request, or a 2xx JSON body
    of at most ``limit`` bytes (and its Link headers when asked); else the error it is."""
    status = resp.status
    meta = None
    if validators is not None:
        meta = ResponseMeta.from_headers(resp.headers)
        if status == 304:
            return status, b"", meta, ()
    if not 200 <= status < 300:
        raise HTTPStatusError(
            f"HTTP {status} {resp.reason or ''}".strip(),
            status=status,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            transient=status in TRANSIENT_STATUSES,
        )
    check_content_type(resp)
    body = await read(resp, limit)
    return status, body, meta, tuple(resp.headers.getall("Link", ())) if links else ()


def next_hop(url: URL, resp: aiohttp.ClientResponse, seen: set[URL]) -> URL:
    """Where the redirect ``resp`` to ``url`` goes, refusing a missing or invalid Location, a
    scheme other than http(s) and a hop already ``seen``."""
    location = resp.headers.get("Location")
    if not location:
        raise RedirectError(f"HTTP {resp.status} without a Location header", status=resp.status)
    try:
        nxt = url.join(URL(location)).with_fragment(None)
    except ValueError as exc:
        raise RedirectError(f"invalid redirect target: {exc}", status=resp.status) from exc
    if nxt.scheme not in ("http", "https"):
        raise RedirectError(f"redirect to scheme {nxt.scheme!r} refused", status=resp.status)
    if nxt in seen:
        raise RedirectError("redirect loop", status=resp.status)
    return nxt


def check_content_type(resp: aiohttp.ClientResponse) -> None:
    """Refuse a response whose Content-Type is not one JSON comes as (none is accepted)."""
    raw = resp.headers.get("Content-Type")
    if raw is None or raw in _USUAL_JSON_TYPES:
        return  # none, or a usual header as sent: no parsing (about 1 % of CPU at 1 KB)
    ctype = resp.content_type.lower()
    if ctype.endswith("+json") or ctype in _JSON_TYPES:
        return
    raise ContentTypeError(f"content type {ctype!r} is not JSON", status=resp.status)


async def read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body of ``resp``, refused as soon as it (or its declared length, when not encoded)
    passes ``limit`` bytes."""
    declared = resp.content_length
    if declared is not None and declared > limit and "Content-Encoding" not in resp.headers:
        raise TooLargeError(f"Content-Length {declared} exceeds {limit} bytes", status=resp.status)
    # aiohttp inflates incrementally, one bounded piece per read, so counting what each read
    # returns cuts a bomb or an endless body at the cap without holding more than that.
    content = resp.content
    # Usually the whole body came in with the headers: taken without a coroutine.
    first = content.read_nowait() if content.is_eof() else await content.readany()
    if len(first) > limit:
        raise TooLargeError(f"body exceeds {limit} bytes after decompression", status=resp.status)
    if content.is_eof():
        return first  # the common case: the whole body came in one read
    chunks = [first]
    size = len(first)
    while chunk := await content.readany():
        size += len(chunk)
        if size > limit:
            raise TooLargeError(
                f"body exceeds {limit} bytes after decompression", status=resp.status
            )
        chunks.append(chunk)
    return b"".join(chunks)
