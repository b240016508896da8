"""A local sample JSON API for the demo: good items, plus a few of each way a URL can fail."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from aiohttp import web

_FLAKY_SEEN = web.AppKey("flaky_seen", set[int])
_FEED_POLLS = web.AppKey("feed_polls", dict[int, int])


def item(n: int) -> dict[str, object]:
    """A deterministic item of about 1 KB."""
    digest = hashlib.sha256(str(n).encode()).hexdigest()
    return {
        "id": n,
        "sku": f"SKU-{n:08d}",
        "name": f"Sample item {n}",
        "price": round((n % 9973) / 7.0, 2),
        "in_stock": n % 3 != 0,
        "tags": ["sample", f"group-{n % 17}", f"shelf-{n % 5}"],
        "checksum": digest,
        "description": ("A sample record served by harvester's demo API. " * 12).strip(),
    }


async def _item(request: web.Request) -> web.Response:
    n = int(request.match_info["n"])
    return web.Response(body=orjson.dumps(item(n)), content_type="application/json")


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound(text='{"error": "no such item"}', content_type="application/json")


async def _broken(request: web.Request) -> web.Response:
    return web.Response(text='{"id": 1, "name": "truncated', content_type="application/json")


async def _flaky(request: web.Request) -> web.Response:
    # 503 on the first request for each n, then the item: shows a retry that succeeds.
    n = int(request.match_info["n"])
    seen = request.app[_FLAKY_SEEN]
    if n not in seen:
        seen.add(n)
        raise web.HTTPServiceUnavailable(headers={"Retry-After": "0"})
    return await _item(request)


async def _feed(request: web.Request) -> web.Response:
    # A pollable source, three kinds by n: n % 3 == 0 sends an ETag and answers 304 to a
    # matching If-None-Match; 1 sends the same body without validators (found unchanged by
    # its hash); 2 changes on every request.
    n = int(request.match_info["n"])
    polls = request.app[_FEED_POLLS]
    polls[n] = polls.get(n, 0) + 1
    body = {**item(n), "feed": True}
    if n % 3 == 2:
        body["version"] = polls[n]
    raw = orjson.dumps(body)
    headers = {"Cache-Control": "max-age=60"}
    if n % 3 == 0:
        etag = '"' + hashlib.sha256(raw).hexdigest()[:16] + '"'
        headers["ETag"] = etag
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
    return web.Response(body=raw, content_type="application/json", headers=headers)


async def _huge(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    chunk = b'"' + b"x" * 65_000 + b'",'
    try:
        await resp.prepare(request)
        await resp.write(b"[")
        for _ in range(64):  # about 4 MB, over the demo's 1 MiB cap
            await resp.write(chunk)
        await resp.write(b"0]")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the worker hung up at its cap, as it should: nothing to report
    return resp


def make_app() -> web.Application:
    app = web.Application()
    app[_FLAKY_SEEN] = set()
    app[_FEED_POLLS] = {}
    app.router.add_get("/items/{n:\\d+}", _item)
    app.router.add_get("/missing/{n:\\d+}", _missing)
    app.router.add_get("/broken/{n:\\d+}", _broken)
    app.router.add_get("/flaky/{n:\\d+}", _flaky)
    app.router.add_get("/huge/{n:\\d+}", _huge)
    app.router.add_get("/feeds/{n:\\d+}", _feed)
    return app


@asynccontextmanager
async def serve(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the sample API; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


def demo_urls(base: str, count: int) -> list[str]:
    """``count`` URLs: mostly good items, with a few of each failure the demo shows."""
    urls: list[str] = []
    for n in range(count):
        r = n % 100
        if r == 97:
            urls.append(f"{base}/missing/{n}")
        elif r == 98:
            urls.append(f"{base}/broken/{n}")
        elif r == 99:
            urls.append(f"{base}/flaky/{n}")
        elif n % 1000 == 500:
            urls.append(f"{base}/huge/{n}")
        else:
            urls.append(f"{base}/items/{n}")
    urls.append("not a url")
    return urls
