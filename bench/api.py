"""The benchmark's API upstream: an ASGI app (run by granian) answering like a paged JSON API.

    /api/{kb}k.json?i=X          a JSON body of about kb KiB (the "api plain" case)
    /api/{kb}k.json?i=X&pages=N  page 1 of N; page p at &p=p, each but the last with an absolute
                                 ``Link: <...>; rel="next"`` header, as GitHub's API sends it
    ...&auth=1                   401 unless the request carries ``Authorization: Bearer TOKEN``
                                 (the "api auth+pages" case: a bearer profile signs every page)

Bodies are built once per size and served from memory, so both cases cost the upstream the same
per request and the comparison between them is harvester's alone.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import parse_qsl

from bench.upstream import make_body

_JSON = (b"content-type", b"application/json")
# The bench's bearer token: a fixed value, since nothing it guards is real.
TOKEN = "bench-token-not-a-secret"
_AUTHORIZATION = b"Bearer " + TOKEN.encode()


@functools.cache
def _body(kb: int) -> bytes:
    return make_body(kb * 1024)


def _next_link(scope: dict[str, Any], query: list[tuple[str, str]]) -> bytes | None:
    """The Link header of a page, or None on the last page."""
    params = dict(query)
    pages = int(params.get("pages", "1"))
    page = int(params.get("p", "1"))
    if page >= pages:
        return None
    host = dict(scope["headers"]).get(b"host", b"127.0.0.1").decode()
    rest = "&".join(f"{k}={v}" for k, v in query if k != "p")
    return f'<http://{host}{scope["path"]}?{rest}&p={page + 1}>; rel="next"'.encode()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """One GET: the body of the size the path names, and the next page's link if any."""
    path: str = scope["path"]
    if scope["type"] != "http" or not path.startswith("/api/") or not path.endswith("k.json"):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    kb = int(path.removeprefix("/api/").removesuffix("k.json"))
    headers = [_JSON]
    query = parse_qsl(scope["query_string"].decode())
    if ("auth", "1") in query and dict(scope["headers"]).get(b"authorization") != _AUTHORIZATION:
        await send({"type": "http.response.start", "status": 401, "headers": [_JSON]})
        await send({"type": "http.response.body", "body": b'{"error": "unauthorized"}'})
        return
    if any(k == "pages" for k, _ in query):
        link = _next_link(scope, query)
        if link is not None:
            headers.append((b"link", link))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": _body(kb)})
