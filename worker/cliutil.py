"""Small helpers the ``harvester`` subcommands share: URL files and plain-text tables."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TextIO


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` and ``rows`` as aligned lines, trailing spaces trimmed."""
    lines = [list(columns), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def read_urls(stream: TextIO) -> Iterator[str]:
    """URLs from a file of one URL a line; blank lines and ``#`` comments are skipped."""
    for line in stream:
        url = line.strip()
        if url and not url.startswith("#"):
            yield url
