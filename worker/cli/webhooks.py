"""``harvester webhooks list|redeliver``: look at completion webhooks and deliver given-up ones
again (`worker.engine.outbox`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson

from worker.cli.util import format_age, positive, print_table, table, with_pool
from worker.errors import UsageError

if TYPE_CHECKING:  # the outbox pulls in asyncpg: only when a command runs
    from worker.engine.outbox import Delivery


def _print_table(rows: list[Delivery]) -> None:
    """The rows as a table; every field is in ``--json``."""
    from rich.text import Text

    from worker.logs import safe

    now = datetime.now(UTC)
    t = table(
        "id", "state", "tries", "last", "error*", "job*", "url*", title="webhooks, newest first"
    )
    for r in rows:
        last = r.delivered_at or r.last_attempt_at
        age = "-" if last is None else f"{format_age((now - last).total_seconds())} ago"
        t.add_row(
            str(r.id),
            r.state,
            str(r.attempts),
            age,
            *(Text(safe(cell)) for cell in (r.last_error or "", r.job_id, r.url)),
        )
    print_table(t)


def cmd_list(args: argparse.Namespace) -> int:
    from worker.engine.outbox import list_deliveries

    state = "failed" if args.failed else args.state
    rows = with_pool(lambda pool: list_deliveries(pool, state=state, limit=args.limit))
    if args.json:
        out = sys.stdout.buffer
        for row in rows:
            out.write(orjson.dumps(dataclasses.asdict(row)) + b"\n")
        out.flush()
    elif rows:
        _print_table(rows)
    else:
        print("no webhooks match", file=sys.stderr)
    return 0


def cmd_redeliver(args: argparse.Namespace) -> int:
    from worker.engine.outbox import redeliver

    if bool(args.ids) == args.failed:
        raise UsageError("give delivery ids (see harvester webhooks list --failed) or --failed")
    ids = None if args.failed else args.ids
    count = with_pool(lambda pool: redeliver(pool, ids))
    print(f"{count} webhook(s) due again", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``webhooks`` and its subcommands to the ``harvester`` parser."""
    webhooks = sub.add_parser("webhooks", help="list completion webhooks, or deliver them again")
    commands = webhooks.add_subparsers(
        dest="webhooks_command", metavar="COMMAND", title="commands", required=True
    )
    p = commands.add_parser("list", help="outbox rows, newest first")
    p.add_argument("--failed", action="store_true", help="only those given up")
    p.add_argument(
        "--state", choices=("pending", "delivered", "failed"), default=None, help="only this state"
    )
    p.add_argument("--limit", type=positive, default=100, metavar="N", help="rows to show (100)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("redeliver", help="make given-up webhooks due again")
    p.add_argument("ids", nargs="*", type=positive, metavar="ID", help="delivery ids (list's id)")
    p.add_argument("--failed", action="store_true", help="every given-up webhook")
    p.set_defaults(func=cmd_redeliver)
