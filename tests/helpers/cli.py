"""Running the ``harvester`` command in tests.

`InProcess` calls ``worker.cli.main`` in this process (in a thread, since each command runs its
own event loop) with the given environment and captured output: how the CLI's behaviour is
tested. `harvester` runs it as a subprocess, where the process itself is the point (a real
worker's signals and logs, the arq CLI, the demo).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from tests.helpers import TEST_QUEUE, Services, worker_env
from worker.cli import main
from worker.settings import get_settings

# What the CLI reads from the environment; an in-process run sees exactly the given ones.
_OURS = ("HARVESTER_", "DATABASE_URL", "REDIS_URL", "TTY_COMPATIBLE", "FORCE_COLOR", "COLUMNS")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_env(services: Services, **extra: str) -> dict[str, str]:
    """The environment of a harvester command against the session's services."""
    env = worker_env(services.database_url, services.redis_url, TEST_QUEUE)
    env.update(extra)
    return env


class InProcess:
    """``harvester ARGS`` through `worker.cli.main`, with ``env`` as its environment (set for
    the call only)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    async def __call__(
        self, *argv: str, env: Mapping[str, str], stdin: str | None = None
    ) -> Result:
        self._capsys.readouterr()  # what came before belongs to no command
        with pytest.MonkeyPatch.context() as mp:
            for key in list(os.environ):
                if key.startswith(_OURS):
                    mp.delenv(key)
            for key, value in env.items():
                if key.startswith(_OURS):
                    mp.setenv(key, value)
            mp.setattr(sys, "stdin", io.StringIO(stdin or ""))
            code = await asyncio.to_thread(self._main, list(argv))
        out, err = self._capsys.readouterr()
        return Result(code, out, err)

    @staticmethod
    def _main(argv: list[str]) -> int:
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        get_settings.cache_clear()
        try:
            return main(argv)
        except SystemExit as exc:  # argparse's usage errors
            return exc.code if isinstance(exc.code, int) else 2
        finally:
            get_settings.cache_clear()
            root.handlers[:] = handlers  # main() installs harvester's handler: take it back
            root.setLevel(level)


async def run(
    *argv: str, env: dict[str, str], stdin: str | None = None, timeout: float = 120
) -> Result:
    """Run a command without blocking the loop: the scripted upstream lives on this loop too."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate((stdin or "").encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def harvester(*args: str, env: dict[str, str], stdin: str | None = None) -> Result:
    """``python -m worker ARGS`` as a subprocess."""
    return await run(sys.executable, "-m", "worker", *args, env=env, stdin=stdin)


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first rich table (`harvester status`'s style) in ``text``,
    each cell whole again: the lines a folded cell took are joined (a row's continuation lines
    have an empty first cell)."""
    header: list[str] = []
    rows: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("┃"):
            header = [c.strip() for c in line.strip("┃").split("┃")]
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            if cells[0] or not rows:
                rows.append(cells)
            else:
                rows[-1] = [a + b for a, b in zip(rows[-1], cells, strict=True)]
        elif line.startswith("└"):
            break
    return header, rows
