"""The benchmark's upstream: static JSON files served faster than the client can fetch them.

nginx when it is on PATH (with pre-compressed gzip files, so serving costs it no compression);
otherwise granian's Rust static-file server (the `bench` extra), the fastest pip-installable
option measured here. Every URL is distinct (a query string) so each lands as its own row.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson


def make_body(size: int) -> bytes:
    """A JSON object of about ``size`` bytes, shaped like an API record list."""
    items = []
    n = 0
    while len(orjson.dumps(items)) < size - 60:
        items.append(
            {"id": n, "name": f"item {n}", "price": n * 1.25, "tags": ["a", "b"], "ok": True}
        )
        n += 1
    return orjson.dumps({"count": len(items), "items": items})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"upstream did not listen on {port}")


@dataclass
class Upstream:
    kind: str
    base: str
    proc: subprocess.Popen[bytes]
    prefix: str = ""

    def url(self, size_kb: int, i: int) -> str:
        return f"{self.base}{self.prefix}/{size_kb}k.json?i={i}"

    def stop(self) -> None:
        _stop(self.proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _write_files(root: Path, sizes_kb: list[int]) -> Path:
    www = root / "www"
    www.mkdir(parents=True, exist_ok=True)
    for kb in sizes_kb:
        body = make_body(kb * 1024)
        (www / f"{kb}k.json").write_bytes(body)
        (www / f"{kb}k.json.gz").write_bytes(gzip.compress(body, 6))
    return www


def _nginx(root: Path, www: Path, port: int) -> subprocess.Popen[bytes]:
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    types {{ application/json json; }}
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    gzip_static on;
    client_body_temp_path {root}/tmp;
    proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp;
    uwsgi_temp_path {root}/tmp;
    scgi_temp_path {root}/tmp;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {www};
    }}
}}
"""
    )
    (root / "tmp").mkdir(exist_ok=True)
    user_opts: list[str] = []
    if os.geteuid() == 0:
        # nginx's workers would switch to "nobody", who may not read the files: stay root here.
        conf.write_text("user root;\n" + conf.read_text())
    return subprocess.Popen(["nginx", "-c", str(conf), *user_opts], stderr=subprocess.DEVNULL)


def _granian(port: int) -> list[str]:
    """The command of a one-worker granian on a loopback ``port`` (an app to follow)."""
    return [
        *(sys.executable, "-m", "granian", "--interface", "asginl", "--host", "127.0.0.1"),
        *("--port", str(port), "--workers", "1", "--no-ws", "--log-level", "warning"),
    ]


def _granian_static(www: Path, port: int) -> subprocess.Popen[bytes]:
    app = www.parent / "granian_app.py"
    app.write_text(
        "async def app(scope, receive, send):\n"
        "    await send({'type': 'http.response.start', 'status': 404, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b''})\n"
    )
    return subprocess.Popen(
        [
            *_granian(port),
            "--static-path-route",
            "/s",
            "--static-path-mount",
            str(www),
            "granian_app:app",
        ],
        cwd=www.parent,
        stderr=subprocess.DEVNULL,
    )


def start(root: Path, sizes_kb: list[int], prefer: str | None = None) -> Upstream:
    """Start the fastest available upstream serving ``/{kb}k.json`` for each size."""
    www = _write_files(root, sizes_kb)
    port = _free_port()
    use_nginx = prefer == "nginx" or (prefer is None and shutil.which("nginx") is not None)
    proc = _nginx(root, www, port) if use_nginx else _granian_static(www, port)
    _wait_for_port(port)
    base = f"http://127.0.0.1:{port}"
    return Upstream("nginx", base, proc) if use_nginx else Upstream("granian", base, proc, "/s")


@dataclass
class Api:
    """The API upstream (`bench.api`): plain and Link-paged JSON from one granian process."""

    base: str
    proc: subprocess.Popen[bytes]

    def url(self, size_kb: int, i: int, pages: int = 0) -> str:
        return f"{self.base}/api/{size_kb}k.json?i={i}" + (f"&pages={pages}" if pages else "")

    def stop(self) -> None:
        _stop(self.proc)


def start_api() -> Api:
    """Start `bench.api` under granian on a free loopback port."""
    port = _free_port()
    proc = subprocess.Popen(
        [*_granian(port), "bench.api:app"],
        cwd=Path(__file__).resolve().parent.parent,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(port)
    return Api(f"http://127.0.0.1:{port}", proc)
