"""Small helpers the ``harvester`` subcommands share: arguments, settings, a pool, URL files,
tables."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Final, TypeVar

from worker.errors import UsageError

if TYPE_CHECKING:  # asyncpg and rich load only when a command that needs them runs
    import asyncpg
    from rich.table import Table

    from worker.settings import Settings

T = TypeVar("T")

# The exit codes of every harvester command (the README's table).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and the answer is no: unhealthy, nothing matched, a conflict
EXIT_UNHEALTHY = EXIT_FAILED
EXIT_CONFIG = 2  # invalid configuration, arguments or input, or a database to migrate
EXIT_UNAVAILABLE = 3  # Redis or Postgres unavailable, or a port in use
EXIT_INTERRUPTED = 130  # Ctrl-C

# A command that answers and exits retries Redis for about a second, not through an outage:
# HARVESTER_REDIS_RETRY_TIME is the worker's budget (see `command_settings`).
COMMAND_REDIS_RETRY_S = 0.0


def positive(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def process_count(text: str) -> int:
    """argparse type: a number of worker processes, 1 to `MAX_PROCESSES`."""
    from worker.settings import MAX_PROCESSES

    value = int(text)
    if not 1 <= value <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_PROCESSES}")
    return value


def command_settings() -> Settings:
    """The settings for a command that answers and exits (not the worker or the API): Redis
    errors come back after a few quick retries instead of riding out an outage in silence."""
    from worker.settings import get_settings

    return get_settings().model_copy(update={"redis_retry_time": COMMAND_REDIS_RETRY_S})


def known_profiles() -> frozenset[str] | None:
    """The credential profile names, when HARVESTER_CREDENTIALS is set for this command (None:
    the command cannot know them, and leaves the judgement of ``auth`` to the worker)."""
    from worker.engine.credentials import profile_names
    from worker.settings import get_settings

    path = get_settings().credentials
    return profile_names(path) if path is not None else None


def with_pool(work: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    """Run ``work`` with the store's pool for the configured database, closed afterwards."""
    from worker.engine import store
    from worker.settings import get_settings

    async def go() -> T:
        async with store.open_pool(get_settings()) as pool:
            return await work(pool)

    return asyncio.run(go())


def format_age(seconds: float) -> str:
    """A time span as a table shows it, in its largest unit: ``45s``, ``14m``, ``3h``, ``2d``."""
    seconds = abs(seconds)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def table(*columns: str, title: str | None = None) -> Table:
    """A rich table in `harvester status`'s style. Every column keeps its cells on one line
    except those named ``…*`` (a URL, a job id), which fold inside their column when the
    terminal is narrow, so a row fits 80 columns and nothing else breaks mid-word."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for name in columns:
        folds = name.endswith("*")
        t.add_column(
            name.rstrip("*"),
            no_wrap=not folds,
            overflow="fold" if folds else "ellipsis",
            ratio=1 if folds else None,
        )
    return t


def print_table(t: Table) -> None:
    """Print ``t`` on stdout (the terminal's width, or 80 columns when piped)."""
    from rich.console import Console

    Console(highlight=False).print(t)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``columns`` and ``rows`` as aligned lines, trailing spaces trimmed. Cells are shown
    safe for a terminal: credentials redacted, control characters escaped."""
    from worker.logs import safe

    lines = [list(columns), *([safe(c) for c in r] for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


@contextmanager
def url_lines(path: str) -> Iterator[Iterator[str]]:
    """The lines of the URL file ``path`` (``-``: standard input). A file that cannot be opened
    or is not UTF-8 text is a `UsageError` naming it."""
    name = "standard input" if path == "-" else path
    try:
        fh = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
    try:
        yield _decoded(fh, name)
    finally:
        if fh is not sys.stdin:
            fh.close()


def _decoded(lines: Iterable[str], name: str) -> Iterator[str]:
    try:
        yield from lines
    except UnicodeDecodeError as exc:
        raise UsageError(f"cannot read {name}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None


def read_urls(stream: Iterable[str]) -> Iterator[str]:
    """URLs from the lines of a file of one URL a line; blank lines and ``#`` comments are
    skipped."""
    for line in stream:
        url = line.strip()
        if url and not url.startswith("#"):
            yield url


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--json``, ``--header``, ``--paginate`` and ``--max-pages``: what
    `request_fields` reads."""
    parser.add_argument("--method", default=None, help="GET (default), POST, PUT or PATCH")
    parser.add_argument(
        "--json", default=None, metavar="JSON", help="a request body: JSON, or @FILE holding it"
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an extra header (repeatable); never a secret: Authorization and Cookie are refused",
    )
    parser.add_argument("--paginate", default=None, metavar="STYLE", help=PAGINATE_HELP)
    parser.add_argument(
        "--max-pages",
        type=positive,
        default=None,
        metavar="N",
        help="pages per walk, the first included (100; at most HARVESTER_MAX_PAGES)",
    )
    parser.add_argument(
        "--records-path",
        default=None,
        metavar="JSONPATH",
        help="extract records: each element at JSONPATH ($.data[*]) in each body is upserted "
        "by (--source, its key); needs --records-key and --source",
    )
    parser.add_argument(
        "--records-key",
        default=None,
        metavar="JSONPATH",
        help="each record's key, from the record ($.id)",
    )


def request_fields(
    method: str | None,
    json_arg: str | None,
    headers: Sequence[str],
    paginate: str | None = None,
    max_pages: int | None = None,
) -> dict[str, object]:
    """The job fields of ``enqueue``'s --method, --json (JSON, or ``@FILE``), --header
    ('Name: value', repeatable), --paginate and --max-pages, left out when not given; the job
    model judges the values."""
    fields: dict[str, object] = {}
    if method is not None:
        fields["method"] = method.upper()
    if json_arg is not None:
        fields["json"] = _json_arg(json_arg)
    if headers:
        fields["headers"] = dict(_header_arg(h) for h in headers)
    if paginate is not None or max_pages is not None:
        fields["paginate"] = paginate_arg(paginate, max_pages)
    return fields


def records_fields(path: str | None, key: str | None) -> dict[str, object]:
    """The job's ``records`` from --records-path and --records-key (both or neither); the
    job model judges the paths."""
    if path is None and key is None:
        return {}
    if path is None or key is None:
        raise UsageError("give both --records-path and --records-key, or neither")
    return {"records": {"path": path, "key": key}}


PAGINATE_HELP: Final = (
    "walk each URL's pages: link (the Link rel=next header), json:PATH (the next URL at PATH "
    "in the body) or cursor:PATH:PARAM (the value at PATH sent as ?PARAM=); each page a row"
)


def paginate_arg(text: str | None, max_pages: int | None = None) -> dict[str, object]:
    """The job's ``paginate`` object from ``--paginate link|json:PATH|cursor:PATH:PARAM`` and
    ``--max-pages N``; the paths are judged by the job model."""
    if text is None:
        raise UsageError("--max-pages needs --paginate")
    style, _, rest = text.partition(":")
    spec: dict[str, object]
    if style == "link" and not rest:
        spec = {"next": "link"}
    elif style == "json" and rest:
        spec = {"next": "json", "path": rest}
    elif style == "cursor" and ":" in rest:
        path, _, param = rest.rpartition(":")
        spec = {"cursor": {"path": path, "param": param}}
    else:
        raise UsageError(
            f"--paginate {text!r}: give link, json:PATH or cursor:PATH:PARAM "
            "(e.g. json:links.next, cursor:meta.next_cursor:cursor)"
        )
    if max_pages is not None:
        spec["max_pages"] = max_pages
    return spec


def _json_arg(text: str) -> object:
    import orjson

    where = "--json"
    if text.startswith("@"):
        where = f"--json {text}"
        try:
            with open(text[1:], "rb") as fh:
                text = fh.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise UsageError(f"cannot read {text[1:]}: {why}") from None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{where} is not JSON: {exc}") from None


def _header_arg(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise UsageError(f"--header {text[:80]!r} is not 'Name: value'")
    return name.strip(), value.strip()


def read_requests(lines: Iterable[str], name: str) -> Iterator[dict[str, object]]:
    """Request objects from a file of JSON lines (one object a line, blank lines skipped) or
    holding one JSON array of objects (its first character is ``[``); anything else is a
    `UsageError` naming the place."""
    numbered = ((n, line.strip()) for n, line in enumerate(lines, 1))
    first = next(((n, text) for n, text in numbered if text), None)
    if first is None:
        return
    number, text = first
    if text.startswith("["):  # a JSON array: the whole file is it
        whole = "\n".join([text, *(t for _, t in numbered)])
        for n, item in enumerate(_array(whole, name)):
            yield _request(item, name, f"item {n}")
        return
    yield _request(_json_line(text, name, number), name, f"line {number}")
    for number, text in numbered:
        if text:
            yield _request(_json_line(text, name, number), name, f"line {number}")


def _request(item: object, name: str, where: str) -> dict[str, object]:
    if not isinstance(item, dict):
        raise UsageError(f"{name}: {where} is not a JSON object (a request: url, ...)")
    return item


def _array(text: str, name: str) -> Iterator[object]:
    import orjson

    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{name} is not a JSON array of requests: {exc}") from None
    if not isinstance(value, list):
        raise UsageError(f"{name} is not a JSON array of requests")
    return iter(value)


def _json_line(text: str, name: str, number: int) -> object:
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"{name}: line {number} is not JSON: {exc}") from None
