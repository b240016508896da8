"""``harvester failures list|replay``: look at recorded failures and replay them as new jobs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson

from worker.cli.util import (
    EXIT_CONFIG,
    command_settings,
    format_age,
    positive,
    print_table,
    table,
    with_pool,
)
from worker.engine.schedule import parse_duration

if TYPE_CHECKING:  # worker.replay pulls in asyncpg and aiohttp: only when a command runs
    from worker.scheduling.replay import FailureRow


def parse_since(text: str) -> datetime:
    """``--since``: a duration back from now (``2h``, ``1d``) or an ISO-8601 time (UTC if naive)."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        as_duration = str(exc)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        if "needs a unit" in as_duration:  # "15": a duration, without its unit
            raise argparse.ArgumentTypeError(as_duration) from None
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 1d) nor an ISO-8601 time"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _as_json(row: FailureRow) -> bytes:
    return orjson.dumps(dataclasses.asdict(row))  # failed_at as RFC 3339


def _print_table(rows: list[FailureRow]) -> None:
    """The rows as a table that fits the terminal (job ids and URLs fold within their column);
    every field is in ``--json``. An ``auth`` column (the credential profile's name) appears
    only when a row has one."""
    from rich.text import Text

    from worker.logs import safe

    now = datetime.now(UTC)
    with_auth = any(r.auth is not None for r in rows)
    columns = ("id", "failed", "error", "tries", *(("auth",) if with_auth else ()), "job*", "url*")
    t = table(*columns, title="failures, newest first")
    for r in rows:
        error = r.error if r.status is None else f"{r.error} {r.status}"
        cells = (error, str(r.attempts), *((r.auth or "",) if with_auth else ()), r.job_id, r.url)
        t.add_row(
            str(r.id),
            f"{format_age((now - r.failed_at).total_seconds())} ago",
            *(Text(safe(cell)) for cell in cells),
        )
    print_table(t)
    replayed = sum(r.replayed_by is not None for r in rows)
    if replayed:
        print(f"{replayed} of these already replayed (their new job: replayed_by in --json)")


def cmd_list(args: argparse.Namespace) -> int:
    from worker.scheduling.replay import list_failures

    rows = with_pool(
        lambda pool: list_failures(
            pool, job_id=args.job, kinds=args.kind, since=args.since, limit=args.limit
        )
    )
    if args.json:
        out = sys.stdout.buffer
        for row in rows:
            out.write(_as_json(row) + b"\n")
        out.flush()
    elif rows:
        _print_table(rows)
    else:
        print("no failures match", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from worker.engine import store
    from worker.queue.client import open_queue
    from worker.scheduling.replay import ReplayResult, replay_failures

    settings = command_settings()
    batch_size = args.batch_size or min(settings.max_batch_urls, 1000)
    if batch_size > settings.max_batch_urls:
        print(
            "harvester: --batch-size must not exceed HARVESTER_MAX_BATCH_URLS "
            f"({settings.max_batch_urls})",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    async def go() -> ReplayResult:
        async with store.open_pool(settings) as pool, open_queue(settings) as redis:
            return await replay_failures(
                pool,
                redis,
                kinds=args.kind,
                transient_only=args.transient,
                since=args.since,
                job_id=args.job,
                reason="cli",
                batch_size=batch_size,
                limit=args.limit,
                dry_run=args.dry_run,
            )

    # A Redis error reaches `main`, which says it (exit 3). Failures already claimed stay
    # claimed; the next replay re-enqueues their jobs.
    result = asyncio.run(go())
    if args.dry_run:
        print(f"dry run: would replay {result.urls} URL(s) in {result.batches} job(s)")
        return 0
    for job_id in result.jobs:
        print(job_id)
    print(f"replayed {result.urls} URL(s) in {len(result.jobs)} job(s)", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``failures`` and its subcommands to the ``harvester`` parser."""
    failures = sub.add_parser("failures", help="list recorded failures, or replay them as new jobs")
    commands = failures.add_subparsers(
        dest="failures_command", metavar="COMMAND", title="commands", required=True
    )

    p = commands.add_parser("list", help="failure rows, newest first")
    p.add_argument("--job", default=None, metavar="ID", help="only this job id")
    _add_kind(p)
    _add_since(p)
    p.add_argument("--limit", type=positive, default=100, metavar="N", help="rows to show (100)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("replay", help="retry failures not yet replayed, as new jobs")
    _add_kind(p)
    p.add_argument(
        "--transient", action="store_true", help="only timeouts, connection errors, 5xx, 429..."
    )
    _add_since(p)
    p.add_argument("--job", default=None, metavar="ID", help="only failures of this job id")
    p.add_argument(
        "--batch-size", type=positive, default=None, metavar="N", help="URLs per new job (1000)"
    )
    p.add_argument(
        "--limit",
        type=positive,
        default=10_000,
        metavar="N",
        help="failure rows to replay at most (10000)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed, change nothing"
    )
    p.set_defaults(func=cmd_replay)


def _add_kind(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kind",
        action="append",
        default=None,
        metavar="KIND",
        help="only this error kind: timeout, http_status... (repeatable: any of them)",
    )


def _add_since(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--since",
        type=parse_since,
        default=None,
        metavar="WHEN",
        help="a duration back from now (2h, 1d) or an ISO-8601 time",
    )
