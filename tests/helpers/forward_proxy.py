"""A real forward proxy for the tests: proxy.py (from PyPI) as a subprocess on a free loopback
port, with basic auth, plain HTTP forwarding and CONNECT tunnels. Its access log says which
requests it carried; it is stopped (with every process it started) even when a test fails.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

from tests.helpers.processes import stop_tree

USER = "harvester-proxy-user"
PASSWORD = "proxy-pw-5ec4e7-not-elsewhere"

# proxy.py's access log: "127.0.0.1:40000 - GET 127.0.0.1:8000/json/x - 200 OK - ..." for a
# forwarded request, "127.0.0.1:40000 - CONNECT 127.0.0.1:8443 - 1234 bytes - ..." for a tunnel.
_ACCESS = re.compile(r"access_log:\d+ - \S+ - (?P<method>[A-Z]+) (?P<target>\S+)")


class ForwardProxy:
    """proxy.py on 127.0.0.1, demanding ``USER``:``PASSWORD``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def log_file(self) -> Path:
        return self.folder / "proxy.log"

    def url(self, *, user: str | None = USER) -> str:
        """``http://[user@]127.0.0.1:port``: the proxy as HARVESTER_PROXY_URL names it."""
        return f"http://{user + '@' if user else ''}127.0.0.1:{self.port}"

    async def start(self, timeout: float = 30.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        port_file = self.folder / "port"
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy",
            "--hostname=127.0.0.1",
            "--port=0",
            f"--port-file={port_file}",
            f"--basic-auth={USER}:{PASSWORD}",
            "--num-workers=1",
            "--num-acceptors=1",
            f"--data-dir={self.folder / 'data'}",
            f"--log-file={self.log_file}",
            "--log-level=INFO",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=self.folder,
        )
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                await self.stop()
                raise RuntimeError(f"proxy.py did not start: {self._log()[-2000:]}")
            await asyncio.sleep(0.05)
        self.port = int(port_file.read_text().split()[0])

    async def stop(self) -> None:
        if self._proc is not None:
            await stop_tree(self._proc)

    def carried(self) -> list[tuple[str, str]]:
        """(method, target) of every request the proxy handled, in order: ``("GET",
        "127.0.0.1:8000/json/x")``, ``("CONNECT", "127.0.0.1:8443")``."""
        return [(m["method"], m["target"]) for m in _ACCESS.finditer(self._log())]

    def _log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""
