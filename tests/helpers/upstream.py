"""A scripted upstream for the tests: a real aiohttp.web server that misbehaves on request.

Routes (all on one loopback port):
  /json/{name}                       200, a small JSON object naming ``name``
  /status/{code}                     that status, with a JSON error body
  /flaky/{key}?fails=N&status=S      any method: S for the first N requests of ``key``, then JSON
  /retry-after/{key}?seconds=S       429 with Retry-After: S once per ``key``, then JSON
  /slow/{name}?delay=S               JSON after S seconds; in-flight requests are counted
  /gate/{name}                       JSON once the test sets ``upstream.gate`` (404 to a
                                     client port in ``upstream.gate_refused``)
  /gzip/{name}                       gzip-encoded JSON
  /gzip-bomb                         a small gzip body that inflates past any sane cap
  /encoded/{encoding}/{name}         JSON in that Content-Encoding (gzip, deflate, br, zstd)
  /bomb/{encoding}                   a small body in that encoding that inflates to 64 MiB
  /big?size=N                        a JSON string body of about N bytes, streamed
  /invalid-json, /nul, /html, /empty a body harvester must refuse, each a different way
  /redirect/{n}                      n redirects, then JSON; /loop redirects to itself
  /redirect-to?location=L            one redirect to L
  /served/{name}                     ``upstream.served[name]``: a (body, content type) pair the
                                     test sets
  /api/{path}                        JSON naming the path: the docs' api.example.com; a path
                                     whose first segment is in ``upstream.locks`` demands that
                                     credential (`tests.helpers.locks`); /api/paged/{style}/{name}:
                                     `pages` under it; /api/v1/orders: two records under
                                     ``data`` (the README's records example);
                                     ?fails=N&status=S: S for the first N requests of the path
                                     that pass its credential check (a flaky locked API)
  /oauth/token                       ``upstream.tokens``: an OAuth2 client-credentials endpoint
  /echo-auth/{name}                  403, its reason phrase echoing the credential it received
  /pages/{style}/{name}?n=N          any method: N pages (style link, json or cursor), page K at
                                     ?page=K (?cursor=cK for cursor); scripted by fail_at=K (page
                                     K answers 404), loop_at=K (page K's next is page 1),
                                     next_base=B (next pages on base B), gate_at=K (page K
                                     answers once the test sets ``upstream.gate``), etag=1
                                     (an ETag per page, and 304 to its If-None-Match)
  /echo/{name}?delay=S               any method: JSON naming ``name``, the method and the body,
                                     after S seconds (0 by default)
  /redirect-as/{code}?location=L     any method: a ``code`` redirect (301, 302, 303, 307, 308) to L
  /feed/{name}                       a pollable source scripted by ``upstream.feeds[name]``
                                     (`Feed`): versioned body, ETag / Last-Modified honoured
                                     with 304, Cache-Control max-age, or a failure status
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gzip
import socket
import ssl
import threading
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate

import brotli
import orjson
from aiohttp import web
from backports import zstd

from tests.helpers.locks import Lock, TokenEndpoint, echoed_credential

# Every Content-Encoding harvester asks for, and how to produce it.
ENCODINGS = {
    "gzip": lambda data: gzip.compress(data, compresslevel=9),
    "deflate": lambda data: zlib.compress(data, 9),
    "br": lambda data: brotli.compress(data, quality=5),
    "zstd": lambda data: zstd.compress(data, level=3),
}


@functools.cache
def bomb(encoding: str) -> bytes:
    """64 MiB of spaces inside a JSON string, compressed to 64 KiB or (much) less; built once."""
    return ENCODINGS[encoding](b'"' + b" " * (64 * 1024 * 1024) + b'"')


def gzip_bomb() -> bytes:
    """The gzip `bomb`."""
    return bomb("gzip")


@dataclass
class Hit:
    path: str
    at: float
    peer_port: int
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    body: bytes = b""


@dataclass
class Feed:
    """How /feed/{name} answers: change ``version`` to change the body."""

    version: int = 1
    etag: bool = False
    last_modified: bool = False
    max_age: int | None = None
    status: int | None = None  # answer this status instead of the body
    retry_after: str | None = None

    def body(self, name: str) -> bytes:
        return orjson.dumps({"name": name, "version": self.version})


@dataclass
class Upstream:
    hits: list[Hit] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    passed: Counter[str] = field(default_factory=Counter)  # /api/ requests let through, by path
    in_flight: int = 0
    max_in_flight: int = 0
    base: str = ""
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    gate_refused: set[int] = field(default_factory=set)  # client ports /gate/ answers 404
    feeds: dict[str, Feed] = field(default_factory=dict)
    served: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    locks: dict[str, Lock] = field(default_factory=dict)
    tokens: TokenEndpoint = field(default_factory=TokenEndpoint)
    # Serve HTTPS with this context (base then starts https://), on this loopback address.
    ssl_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    # Listen on this port (0: any free one); a receiver that comes up where one was down.
    port: int = 0
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def hits_for(self, prefix: str) -> list[Hit]:
        return [h for h in self.hits if h.path.startswith(prefix)]

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/json/{name}", self._json)
        r.add_get("/status/{code}", self._status)
        r.add_route("*", "/flaky/{key}", self._flaky)
        r.add_get("/retry-after/{key}", self._retry_after)
        r.add_get("/slow/{name}", self._slow)
        r.add_get("/gzip/{name}", self._gzip)
        r.add_get("/gzip-bomb", self._gzip_bomb)
        r.add_get("/encoded/{encoding}/{name}", self._encoded)
        r.add_get("/bomb/{encoding}", self._bomb)
        r.add_get("/big", self._big)
        r.add_get("/invalid-json", self._invalid_json)
        r.add_get("/nul", self._nul)
        r.add_get("/html", self._html)
        r.add_get("/empty", self._empty)
        r.add_get("/gate/{name}", self._gate)
        r.add_get("/redirect/{n}", self._redirect)
        r.add_get("/loop", self._loop)
        r.add_get("/redirect-to", self._redirect_to)
        r.add_get("/feed/{name}", self._feed)
        r.add_route("*", "/pages/{style}/{name}", self._pages)
        r.add_route("*", "/echo/{name}", self._echo)
        r.add_route("*", "/redirect-as/{code}", self._redirect_as)
        r.add_get("/served/{name}", self._served)
        # The documentation's https://api.example.com, for the examples the tests run.
        r.add_route("*", "/api/{path:.*}", self._api)
        r.add_post("/oauth/token", self.tokens.handle)
        r.add_get("/echo-auth/{name}", self._echo_auth)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.host, self.port))
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=self.ssl_context).start()
        scheme = "https" if self.ssl_context is not None else "http"
        self.base = f"{scheme}://{self.host}:{sock.getsockname()[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[Upstream]:
        """Started for the block, stopped after it, even when it fails."""
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    @contextlib.contextmanager
    def serving_in_thread(self) -> Iterator[Upstream]:
        """Served from a thread with an event loop of its own for the block: the arrival times
        it records are then not held up by the test's loop (other upstreams, polling)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()

        def serve() -> None:
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="upstream", daemon=True)
        thread.start()
        try:
            assert started.wait(10), "the upstream did not start"
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    @web.middleware
    async def _record(self, request: web.Request, handler: web.Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        body = await request.read() if request.can_read_body else b""
        self.hits.append(
            Hit(
                request.path_qs,
                time.monotonic(),
                peer[1] if peer else 0,
                dict(request.headers),
                request.method,
                body,
            )
        )
        self.counts[request.path] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    @staticmethod
    def _body(name: str) -> bytes:
        return orjson.dumps({"name": name, "items": list(range(10))})

    async def _json(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._body(request.match_info["name"]), content_type="application/json"
        )

    async def _api(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        if path.startswith("paged/"):
            return await paged(request, "/api/paged", *path.split("/")[1:3])
        lock = self.locks.get(path.split("/", 1)[0])
        refusal = lock.judge(request, self.tokens) if lock is not None else None
        if refusal is not None:
            return web.json_response({"error": "credentials"}, status=refusal)
        if "fails" in request.query and self._passed(request) <= int(request.query["fails"]):
            return web.Response(status=int(request.query.get("status", "503")), text="try again")
        body: dict[str, object] = {
            "name": path,
            "sku": path.replace("/", "-"),
            "price": len(path),
            "in_stock": True,
        }
        if path == "v1/orders":  # the README's records
            body = {"data": [{"id": "o-1", "status": "paid"}, {"id": "o-2", "status": "open"}]}
        if path == "v1/changes":  # docs/scheduled-sources.md's incremental feed
            since = int(request.query.get("since", "0"))
            body = {"changes": [since + 1], "meta": {"next_since": str(since + 1)}}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    def _passed(self, request: web.Request) -> int:
        """Count a request that passed ``/api/``'s credential check; return how many have."""
        self.passed[request.path] += 1
        return self.passed[request.path]

    async def _echo_auth(self, request: web.Request) -> web.Response:
        reason = f"refused {echoed_credential(request)}"
        return web.json_response({"error": "echo"}, status=403, reason=reason)

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(
            status=code, body=b'{"error": "scripted"}', content_type="application/json"
        )

    async def _flaky(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        fails = int(request.query.get("fails", "1"))
        status = int(request.query.get("status", "503"))
        if self.counts[request.path] <= fails:
            return web.Response(status=status, text="try again")
        return web.Response(body=self._body(key), content_type="application/json")

    async def _retry_after(self, request: web.Request) -> web.Response:
        if self.counts[request.path] == 1:
            return web.Response(
                status=429, headers={"Retry-After": request.query.get("seconds", "1")}
            )
        return web.Response(
            body=self._body(request.match_info["key"]), content_type="application/json"
        )

    async def _slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "0.2")))
        return web.Response(
            body=self._body(request.match_info["name"]), content_type="application/json"
        )

    async def _gate(self, request: web.Request) -> web.Response:
        await self.gate.wait()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer and peer[1] in self.gate_refused:
            raise web.HTTPNotFound
        return web.Response(
            body=self._body(request.match_info["name"]), content_type="application/json"
        )

    async def _gzip(self, request: web.Request) -> web.Response:
        body = gzip.compress(self._body(request.match_info["name"]))
        return web.Response(
            body=body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
        )

    async def _gzip_bomb(self, request: web.Request) -> web.Response:
        return web.Response(
            body=gzip_bomb(),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    async def _encoded(self, request: web.Request) -> web.Response:
        encoding = request.match_info["encoding"]
        body = ENCODINGS[encoding](self._body(request.match_info["name"]))
        return web.Response(
            body=body, headers={"Content-Type": "application/json", "Content-Encoding": encoding}
        )

    async def _bomb(self, request: web.Request) -> web.Response:
        encoding = request.match_info["encoding"]
        return web.Response(
            body=bomb(encoding),
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        )

    async def _big(self, request: web.Request) -> web.StreamResponse:
        size = int(request.query.get("size", "1000000"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'"')
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write(b'"')
        await resp.write_eof()
        return resp

    async def _invalid_json(self, request: web.Request) -> web.Response:
        return web.Response(text='{"unterminated": ', content_type="application/json")

    async def _nul(self, request: web.Request) -> web.Response:
        return web.Response(text='{"text": "a\\u0000b"}', content_type="application/json")

    async def _html(self, request: web.Request) -> web.Response:
        return web.Response(text="<html><body>not json</body></html>", content_type="text/html")

    async def _empty(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="application/json")

    async def _served(self, request: web.Request) -> web.Response:
        body, content_type = self.served[request.match_info["name"]]
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _redirect(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n <= 0:
            return web.Response(body=self._body("redirected"), content_type="application/json")
        raise web.HTTPFound(f"/redirect/{n - 1}")

    async def _loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def _redirect_to(self, request: web.Request) -> web.Response:
        # Sent raw, as a hostile server would: not normalised by yarl on the way out.
        return web.Response(status=302, headers={"Location": request.query["location"]})

    async def _pages(self, request: web.Request) -> web.Response:
        style, name = request.match_info["style"], request.match_info["name"]
        return await paged(request, "/pages", style, name, self.gate)

    async def _echo(self, request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("delay", "0")))
        raw = await request.read()
        body = {
            "name": request.match_info["name"],
            "method": request.method,
            "body": orjson.loads(raw) if raw else None,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _redirect_as(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"Location": request.query["location"]})

    async def _feed(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        feed = self.feeds.setdefault(name, Feed())
        if feed.status is not None:
            headers = {"Retry-After": feed.retry_after} if feed.retry_after else {}
            return web.Response(status=feed.status, text="scripted failure", headers=headers)
        headers = {"Content-Type": "application/json"}
        if feed.max_age is not None:
            headers["Cache-Control"] = f"public, max-age={feed.max_age}"
        fresh = False
        if feed.etag:
            headers["ETag"] = f'"v{feed.version}"'
            fresh = request.headers.get("If-None-Match") == headers["ETag"]
        if feed.last_modified:
            # One day per version, from a fixed epoch: a stable date for each version.
            headers["Last-Modified"] = formatdate(
                1_700_000_000 + 86_400 * feed.version, usegmt=True
            )
            fresh = fresh or request.headers.get("If-Modified-Since") == headers["Last-Modified"]
        if fresh:
            del headers["Content-Type"]
            return web.Response(status=304, headers=headers)
        return web.Response(body=feed.body(name), headers=headers)


async def paged(
    request: web.Request, prefix: str, style: str, name: str, gate: asyncio.Event | None = None
) -> web.Response:
    """Page K of a paged endpoint (see the module docstring): its items, and its next page in
    the ``Link`` header (style link), the body's ``links.next`` (json) or ``meta.next_cursor``
    (cursor)."""
    q = request.query
    n = int(q.get("n", "3"))
    cursor = q.get("cursor", "")
    page = int(cursor.removeprefix("c") or "1") if style == "cursor" else int(q.get("page", "1"))
    if gate is not None and page == int(q.get("gate_at", "0")):
        await gate.wait()
    etag = f'"{name}-p{page}"' if q.get("etag") else None
    if etag is not None and request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers={"ETag": etag})
    if page == int(q.get("fail_at", "0")):
        return web.Response(
            status=404, body=b'{"error": "scripted"}', content_type="application/json"
        )
    nxt = page + 1 if page < n else None
    if nxt is not None and page == int(q.get("loop_at", "0")):
        nxt = 1
    body: dict[str, object] = {
        "name": name,
        "page": page,
        "items": [page * 10 + i for i in range(3)],
    }
    headers = {} if etag is None else {"ETag": etag}
    if nxt is not None:
        kept = {k: v for k, v in q.items() if k not in ("page", "cursor")}
        target = request.url.with_path(f"{prefix}/{style}/{name}").with_query(kept)
        target = target.update_query(page=nxt) if style != "cursor" else target
        link = f"{q.get('next_base', '')}{target.path_qs}"
        if style == "link":
            headers["Link"] = f'<{link}>; rel="next", <{prefix}/{style}/{name}>; rel="first"'
        elif style == "json":
            body["links"] = {"next": link}
    if style == "json" and nxt is None:
        body["links"] = {"next": None}
    if style == "cursor":
        body["meta"] = {"next_cursor": f"c{nxt}" if nxt is not None else None}
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)
