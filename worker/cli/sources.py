"""``harvester sources add|list|enable|disable|remove``: manage registered sources."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import orjson

from worker.cli.util import format_table, format_when, positive, read_urls, with_pool
from worker.engine.schedule import format_duration, parse_duration

if TYPE_CHECKING:  # asyncpg and aiohttp load only when a command runs
    pass

T = TypeVar("T")

_COLUMNS = ("id", "name", "every", "on", "next_due", "last_polled", "outcome", "fails", "url")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_file(path: str) -> list[str]:
    if path == "-":
        return list(read_urls(sys.stdin))
    with open(path, encoding="utf-8") as fh:
        return list(read_urls(fh))


def cmd_add(args: argparse.Namespace) -> int:
    from worker.scheduling import sources

    urls = list(args.urls)
    for path in args.from_file or ():
        urls.extend(_read_file(path))
    if not urls:
        print("harvester: no URLs given (pass URLs or --from-file)", file=sys.stderr)
        return 2
    sources.check_urls(urls)  # before connecting: a typo is not a database problem
    added, updated = with_pool(
        lambda pool: sources.add(pool, urls, every=args.every, name=args.source)
    )
    print(f"added {added}, updated {updated} source(s), every {format_duration(args.every)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from worker.scheduling import sources

    rows = with_pool(lambda pool: sources.list_sources(pool, name=args.source, limit=args.limit))
    if args.json:
        for r in rows:
            sys.stdout.buffer.write(orjson.dumps(r.as_dict()) + b"\n")
        return 0
    cells = [
        [
            str(r.id),
            r.name or "",
            format_duration(r.interval_s),
            "yes" if r.enabled else "no",
            format_when(r.next_due_at),
            format_when(r.last_polled_at),
            r.last_outcome or "",
            str(r.consecutive_failures),
            r.url,
        ]
        for r in rows
    ]
    print(format_table(_COLUMNS, cells))
    return 0


def _toggle(enabled: bool) -> Callable[[argparse.Namespace], int]:
    def cmd(args: argparse.Namespace) -> int:
        from worker.scheduling import sources

        n = with_pool(lambda pool: sources.set_enabled(pool, args.targets, enabled))
        print(f"{'enabled' if enabled else 'disabled'} {n} source(s)")
        return 0 if n else 1

    return cmd


def cmd_remove(args: argparse.Namespace) -> int:
    from worker.scheduling import sources

    n = with_pool(lambda pool: sources.remove(pool, args.targets))
    print(f"removed {n} source(s); their documents stay")
    return 0 if n else 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sources`` and its subcommands to the ``harvester`` parser."""
    p = sub.add_parser("sources", help="manage sources polled on a schedule by the worker's cron")
    cmds = p.add_subparsers(dest="sources_command", required=True)

    a = cmds.add_parser("add", help="register URLs (or update their interval and name)")
    a.add_argument("urls", nargs="*", help="URLs to poll")
    a.add_argument("--every", type=_duration, required=True, help="interval: 30s, 15m, 2h, 1d")
    a.add_argument("--source", default=None, help="name stored as documents.source")
    a.add_argument(
        "--from-file", action="append", metavar="FILE", help="read URLs (one a line, - for stdin)"
    )
    a.set_defaults(func=cmd_add)

    ls = cmds.add_parser("list", help="show registered sources and their last poll")
    ls.add_argument("--source", default=None, help="only sources of this name")
    ls.add_argument("--limit", type=positive, default=1000, help="at most this many (1000)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)

    for name, enabled in (("enable", True), ("disable", False)):
        t = cmds.add_parser(name, help=f"{name} sources, by id or URL")
        t.add_argument("targets", nargs="+", metavar="ID_OR_URL")
        t.set_defaults(func=_toggle(enabled))

    r = cmds.add_parser("remove", help="delete sources, by id or URL (documents stay)")
    r.add_argument("targets", nargs="+", metavar="ID_OR_URL")
    r.set_defaults(func=cmd_remove)
