"""A raw-socket upstream for faults aiohttp.web will not produce: slow-loris, resets, truncation.

Each connection reads one request line and answers according to its path:
  /slowloris-headers   sends the status line, then one header byte at a time, forever
  /slowloris-body      sends headers, then one body byte at a time, forever
  /reset/{key}?fails=N resets the connection (RST) for the first N requests of key, then JSON
  /truncated/{key}?fails=N  promises Content-Length 100, sends 10 bytes and closes, N times; then JSON
  /endless             chunked JSON that never ends
  /bad-utf8            a JSON body with invalid UTF-8 inside a string
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from urllib.parse import parse_qs, urlsplit

_OK = b'{"ok": true}'


class Hostile:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base = ""

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        target = request_line.split()[1].decode() if request_line else "/"
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        self.counts[path] += 1
        fails = int(query.get("fails", ["1"])[0])

        if path == "/slowloris-headers":
            writer.write(b"HTTP/1.1 200 OK\r\n")
            while True:
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/slowloris-body":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n["
            )
            while True:
                writer.write(b" ")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path.startswith("/reset/") and self.counts[path] <= fails:
            sock = writer.get_extra_info("socket")
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif path.startswith("/truncated/") and self.counts[path] <= fails:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                + b'{"partial"'
            )
            await writer.drain()
        elif path == "/endless":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b" " * 65536
            frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            writer.write(b"1\r\n[\r\n")
            while True:
                writer.write(frame)
                await writer.drain()
        elif path == "/latin1-reason":
            # A reason phrase in Latin-1: aiohttp keeps its undecodable byte as a surrogate.
            writer.write(
                b"HTTP/1.1 404 Non trouv\xe9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
        elif path == "/bad-utf8":
            body = b'{"name": "caf\xe9"}'
            writer.write(self._response(body))
            await writer.drain()
        else:
            writer.write(self._response(_OK))
            await writer.drain()

    @staticmethod
    def _response(body: bytes) -> bytes:
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        return head.encode() + body
