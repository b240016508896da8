"""The benchmark's API upstream: an ASGI app (run by granian) answering like a paged JSON API.

    /api/{kb}k.json?i=X          a JSON body of about kb KiB (the "api plain" case)
    /api/{kb}k.json?i=X&pages=N  page 1 of N; page p at &p=p, each but the last with an absolute
                                 ``Link: <...>; rel="next"`` header, as GitHub's API sends it
    ...&auth=1                   401 unless the request carries ``Authorization: Bearer TOKEN``
                                 (the "api auth+pages" case: a bearer profile signs every page)

Bodies are built once per size and served from memory, and a page costs the upstream about
two microseconds more than a plain answer (its Link header and token check), so the comparison
between the cases is harvester's.
"""

from __future__ import annotations

import functools
from typing import Any

from bench.upstream import make_body

_JSON = (b"content-type", b"application/json")
# The bench's bearer token: a fixed value, since nothing it guards is real.
TOKEN = "bench-token-not-a-secret"
_AUTHORIZATION = b"Bearer " + TOKEN.encode()


@functools.cache
def _body(kb: int) -> bytes:
    return make_body(kb * 1024)


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
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _body(kb)})
