"""Small helpers the ``harvester`` subcommands share: arguments, a pool, URL files, tables."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # asyncpg loads only when a command that needs it runs
    import asyncpg

T = TypeVar("T")

# The exit codes of every harvester command (the README's table).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and the answer is no: unhealthy, nothing matched, a conflict
EXIT_UNHEALTHY = EXIT_FAILED
EXIT_CONFIG = 2  # invalid configuration or arguments
EXIT_UNAVAILABLE = 3  # Redis or Postgres unavailable, or a port in use


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run ``work`` with the store's pool for the configured database, closed afterwards."""
    from worker.engine import store
    from worker.settings import get_settings

    async def go() -> T:
        async with store.open_pool(get_settings()) as pool:
            return await work(pool)

    return asyncio.run(go())


def format_when(moment: datetime | None) -> str:
    """A timestamp as a table shows it: UTC, to the second; empty for None."""
    return "" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` and ``rows`` as aligned lines, trailing spaces trimmed. Cells are shown
    safe for a terminal: credentials redacted, control characters escaped."""
    from worker.logs import safe

    lines = [list(columns), *([safe(c) for c in r] for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def read_urls(stream: Iterable[str]) -> Iterator[str]:
    """URLs from the lines of a file of one URL a line; blank lines and ``#`` comments are
    skipped."""
    for line in stream:
        url = line.strip()
        if url and not url.startswith("#"):
            yield url
