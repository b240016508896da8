"""The benchmark's API upstream: an ASGI app (run by granian) answering like a paged JSON API.

    /api/{kb}k.json?i=X          a JSON body of about kb KiB (the "api plain" case)
    /api/{kb}k.json?i=X&pages=N  page 1 of N; page p at &p=p, each but the last with an absolute
                                 ``Link: <...>; rel="next"`` header, as GitHub's API sends it
    /api/{kb}k.json?i=X&records=1  a body of about kb KiB holding 50 records under ``data``, keyed
                                 ``X-0`` to ``X-49`` (the "api records" case)
    ...&auth=1                   401 unless the request carries ``Authorization: Bearer TOKEN``
                                 (the "api auth+pages" case: a bearer profile signs every page)

Bodies are built once per size and served from memory, and a page costs the upstream about
two microseconds more than a plain answer (its Link header and token check), so the comparison
between the cases is harvester's.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from bench.upstream import make_body

_JSON = (b"content-type", b"application/json")
# The bench's bearer token: a fixed value, since nothing it guards is real.
TOKEN = "bench-token-not-a-secret"
_AUTHORIZATION = b"Bearer " + TOKEN.encode()


@functools.cache
def _body(kb: int) -> bytes:
    return make_body(kb * 1024)


RECORDS_PER_BODY = 50
_ID = b"@ID@"


@functools.cache
def _records_template(kb: int) -> tuple[bytes, ...]:
    """A body of about ``kb`` KiB with `RECORDS_PER_BODY` records, split where each one's id
    goes: a request joins the pieces with its own ``i``, so every URL has its own keys."""
    pad = max(0, kb * 1024 // RECORDS_PER_BODY - 77)
    records = [
        {
            "id": f"{_ID.decode()}-{j}",
            "name": f"item {j}",
            "price": j * 1.25,
            "tags": ["a", "b"],
            "text": "x" * pad,
        }
        for j in range(RECORDS_PER_BODY)
    ]
    return tuple(orjson.dumps({"count": RECORDS_PER_BODY, "data": records}).split(_ID))


def _records_body(kb: int, qs: bytes) -> bytes:
    i = qs.partition(b"i=")[2].partition(b"&")[0]
    return i.join(_records_template(kb))


def _next_link(scope: dict[str, Any], qs: bytes, headers: dict[bytes, bytes]) -> bytes | None:
    """The Link header of a page, or None on the last page."""
    params = dict(p.partition(b"=")[::2] for p in qs.split(b"&"))
    pages = int(params.get(b"pages", b"1"))
    page = int(params.get(b"p", b"1"))
    if page >= pages:
        return None
    host = headers.get(b"host", b"127.0.0.1")
    rest = qs if b"&p=" not in qs else qs[: qs.index(b"&p=")]
    return b'<http://%s%s?%s&p=%d>; rel="next"' % (host, scope["path"].encode(), rest, page + 1)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One GET: the body of the size the path names, and the next page's link if any. Kept
    lean: a plain request costs the upstream no query parsing, a page little more."""
    path: str = scope["path"]
    if scope["type"] != "http" or not path.startswith("/api/") or not path.endswith("k.json"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    kb = int(path.removeprefix("/api/").removesuffix("k.json"))
    headers = [_JSON]
    qs: bytes = scope["query_string"]
    if b"pages=" in qs:
        received = dict(scope["headers"])
        if b"auth=1" in qs and received.get(b"authorization") != _AUTHORIZATION:
            await send({"type": "http.response.start", "status": 401, "headers": [_JSON]})
            await send({"type": "http.response.body", "body": b'{"error": "unauthorized"}'})
            return
        link = _next_link(scope, qs, received)
        if link is not None:
            headers.append((b"link", link))
    body = _records_body(kb, qs) if b"records=1" in qs else _body(kb)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
