"""A real pgbouncer in transaction mode in front of a test's Postgres (Debian's ``pgbouncer``
package; `.ci/run` installs it when missing).

It listens on a loopback port of its own and serves every database of the Postgres it fronts.
It is strict on purpose: after every transaction it runs ``DISCARD ALL`` on the server
connection (``server_reset_query_always``), so anything a client leaves in a session (temp
tables, named prepared statements, ``SET``, advisory locks) is gone before its next
transaction, whichever server connection that one gets. A test that relies on session state
fails every time, not when two clients happen to share a server connection.

pgbouncer refuses to run as root: as root it runs as ``nobody``, and its folder is made
readable to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from worker.devtools.embedded import free_port

# Debian installs it in /usr/sbin, which a non-root PATH often lacks.
BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
_RUN_AS = "nobody"
START_TIMEOUT_S = 15.0


class Pgbouncer:
    """pgbouncer, pool_mode = transaction, in front of the Postgres of ``postgres_url``."""

    def __init__(
        self, root: Path, postgres_url: str, *, ignore_startup_parameters: tuple[str, ...] = ()
    ) -> None:
        self.root = root.resolve()
        self.postgres_url = postgres_url
        self.ignore_startup_parameters = ignore_startup_parameters
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str) -> str:
        """``database_url`` (a DSN on the fronted Postgres) through this pgbouncer instead."""
        parts = urlsplit(database_url)
        netloc = parts.netloc.rpartition("@")
        userinfo = netloc[0] + "@" if netloc[1] else ""
        return parts._replace(netloc=f"{userinfo}127.0.0.1:{self.port}").geturl()

    def _ini(self) -> str:
        pg = urlsplit(self.postgres_url)
        server = f"host={pg.hostname or '127.0.0.1'} port={pg.port or 5432}"
        server += f" user={unquote(pg.username or 'postgres')}"
        if pg.password:
            server += f" password={unquote(pg.password)}"
        return "\n".join(
            [
                "[databases]",
                f"* = {server}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                # Clients are not checked: every database logs in as the fronted URL's user.
                "auth_type = any",
                "pool_mode = transaction",
                "max_client_conn = 200",
                "default_pool_size = 20",
                "server_reset_query = DISCARD ALL",
                "server_reset_query_always = 1",
                # Try a restarted Postgres again after 1 s, not the default 15 s.
                "server_login_retry = 1",
                f"ignore_startup_parameters = {','.join(self.ignore_startup_parameters)}",
                "",
            ]
        )

    def start(self) -> None:
        """Write the ini, start pgbouncer, and wait until it accepts connections."""
        if not Path(BINARY).exists():
            raise RuntimeError(f"pgbouncer is not installed ({BINARY}): apt-get install pgbouncer")
        self.root.mkdir(parents=True, exist_ok=True)
        ini = self.root / "pgbouncer.ini"
        ini.write_text(self._ini())
        kwargs: dict[str, Any] = {}
        if os.geteuid() == 0:
            kwargs["user"] = _RUN_AS
            _readable_by_all(ini)
        log = (self.root / "pgbouncer.log").open("ab")
        try:
            self.proc = subprocess.Popen([BINARY, str(ini)], stdout=log, stderr=log, **kwargs)
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited ({self.proc.returncode}): {self.log()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not listening in {START_TIMEOUT_S}s: {self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop pgbouncer (SIGTERM, then SIGKILL); a no-op if it is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@contextlib.contextmanager
def pgbouncer(
    root: Path, postgres_url: str, *, ignore_startup_parameters: tuple[str, ...] = ()
) -> Iterator[Pgbouncer]:
    """A started `Pgbouncer` in ``root`` in front of ``postgres_url``; stopped on exit, also
    when the block fails."""
    bouncer = Pgbouncer(root, postgres_url, ignore_startup_parameters=ignore_startup_parameters)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


def _readable_by_all(path: Path) -> None:
    """Let another user read ``path`` and traverse every folder above it."""
    path.chmod(path.stat().st_mode | stat.S_IRGRP | stat.S_IROTH)
    for folder in path.parents:
        mode = folder.stat().st_mode
        if mode & (stat.S_IXGRP | stat.S_IXOTH) != stat.S_IXGRP | stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXGRP | stat.S_IXOTH)
