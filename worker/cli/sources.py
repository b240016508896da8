"""``harvester sources add|list|enable|disable|remove``: manage registered sources."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from worker.cli.util import (
    EXIT_CONFIG,
    add_request_arguments,
    command_settings,
    format_age,
    known_profiles,
    positive,
    print_table,
    read_urls,
    records_fields,
    request_fields,
    table,
    url_lines,
    with_pool,
)
from worker.engine.schedule import format_duration, parse_duration

if TYPE_CHECKING:  # asyncpg and aiohttp load only when a command runs
    from worker.scheduling.sources import SourceRow


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _read_file(path: str) -> list[str]:
    with url_lines(path) as lines:
        return list(read_urls(lines))


def cmd_add(args: argparse.Namespace) -> int:
    from worker.scheduling import sources

    urls = list(args.urls)
    for path in args.from_file or ():
        urls.extend(_read_file(path))
    if not urls:
        print("harvester: no URLs given (pass URLs or --from-file)", file=sys.stderr)
        return EXIT_CONFIG
    # Judged before connecting: a typo is not a database problem.
    sources.check_urls(urls)
    request = request_fields(args.method, args.json, args.header, args.paginate, args.max_pages)
    request.update(records_fields(args.records_path, args.records_key))
    if args.notify_url is not None:
        request["notify_url"] = args.notify_url
    settings = command_settings()
    spec = sources.poll_spec(
        name=args.source,
        auth=args.auth,
        request=request,
        since_param=args.since_param,
        since_path=args.since_path,
        profiles=known_profiles() if args.auth is not None else None,
        max_pages=settings.max_pages,
        webhooks=settings.webhook_secret is not None,
    )
    added, updated = with_pool(
        lambda pool: sources.add(pool, urls, every=args.every, name=args.source, spec=spec)
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
    _print_table(rows)
    return 0


def _print_table(rows: list[SourceRow]) -> None:
    """The sources as a table that fits the terminal (names and URLs fold within their
    column); every field is in ``--json``."""
    from rich.text import Text

    from worker.logs import safe

    now = datetime.now(UTC)
    t = table("id", "name*", "every", "due", "polled", "outcome", "url*", "sends*", title="sources")
    for r in rows:
        due = (r.next_due_at - now).total_seconds()
        polled = r.last_polled_at
        outcome = r.last_outcome or ""
        if r.consecutive_failures > 1:  # "timeout x3" (the times sign): 3 failures in a row
            outcome += f" ×{r.consecutive_failures}"  # noqa: RUF001  (the times sign, meant)
        t.add_row(
            str(r.id),
            Text(safe(r.name or "")),
            format_duration(r.interval_s),
            "off" if not r.enabled else f"in {format_age(due)}" if due > 0 else "now",
            "never" if polled is None else f"{format_age((now - polled).total_seconds())} ago",
            Text(safe(outcome)),
            Text(safe(r.url)),
            Text(safe(_sends(r))),
        )
    print_table(t)


def _sends(r: SourceRow) -> str:
    """What a source's polls send beyond a plain GET, briefly: ``POST json, 2 headers, auth
    api, since=cursor``."""
    parts = [] if r.method == "GET" and r.body is None else [r.method]
    if r.body is not None:
        parts[-1] += " json"
    if r.paginate is not None:
        parts.append("pages " + _paginate_text(r.paginate))
    if r.headers:
        parts.append(f"{len(r.headers)} header{'s' if len(r.headers) > 1 else ''}")
    if r.auth is not None:
        parts.append(f"auth {r.auth}")
    if r.since_param is not None:
        parts.append(f"{r.since_param}={r.since_value or '(none yet)'}")
    if r.records is not None:
        parts.append(f"records {r.records['path']} by {r.records['key']}")
    if r.notify_url is not None:
        parts.append(f"notify {r.notify_url}")
    return ", ".join(parts)


def _paginate_text(paginate: dict[str, Any]) -> str:
    """A stored ``paginate`` as ``--paginate`` spells it."""
    cursor = paginate.get("cursor")
    if cursor is not None:
        return f"cursor:{cursor['path']}:{cursor['param']}"
    return "json:" + paginate["path"] if paginate.get("next") == "json" else "link"


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
    cmds = p.add_subparsers(
        dest="sources_command", metavar="COMMAND", title="commands", required=True
    )

    _add_add(cmds)

    ls = cmds.add_parser("list", help="show registered sources and their last poll")
    ls.add_argument("--source", default=None, metavar="NAME", help="only sources of this name")
    ls.add_argument(
        "--limit", type=positive, default=1000, metavar="N", help="at most this many (1000)"
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)

    for name, enabled in (("enable", True), ("disable", False)):
        t = cmds.add_parser(name, help=f"{name} sources, by id or URL")
        t.add_argument("targets", nargs="+", metavar="ID_OR_URL")
        t.set_defaults(func=_toggle(enabled))

    r = cmds.add_parser("remove", help="delete sources, by id or URL (documents stay)")
    r.add_argument("targets", nargs="+", metavar="ID_OR_URL")
    r.set_defaults(func=cmd_remove)


def _add_add(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sources add``, the one subcommand with many options."""
    a = cmds.add_parser("add", help="register URLs (or update their interval and name)")
    a.add_argument("urls", nargs="*", metavar="URL", help="URLs to poll")
    a.add_argument(
        "--every",
        type=_duration,
        required=True,
        metavar="DURATION",
        help="interval, with its unit: 30s, 15m, 2h, 1d, 1h30m",
    )
    a.add_argument("--source", default=None, metavar="NAME", help="stored as documents.source")
    a.add_argument(
        "--auth",
        default=None,
        metavar="PROFILE",
        help="the credential profile (HARVESTER_CREDENTIALS) the polls use",
    )
    add_request_arguments(a)
    a.add_argument(
        "--since-param",
        default=None,
        metavar="PARAM",
        help="an incremental cursor: each poll sends ?PARAM=the value read by --since-path",
    )
    a.add_argument(
        "--since-path",
        default=None,
        metavar="PATH",
        help="where the cursor is in a poll's JSON body: a.b[0].c (a body without it keeps the "
        "last value)",
    )
    a.add_argument(
        "--notify-url",
        default=None,
        metavar="URL",
        help="POST each poll job's signed summary here when it finishes (HARVESTER_WEBHOOK_SECRET)",
    )
    a.add_argument(
        "--from-file",
        action="append",
        metavar="FILE",
        help="read URLs from FILE (one a line; - for standard input; repeatable)",
    )
    a.set_defaults(func=cmd_add)
