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
    EXIT_UNAVAILABLE,
    format_table,
    format_when,
    positive,
    with_pool,
)
from worker.engine.schedule import parse_duration

if TYPE_CHECKING:  # worker.replay pulls in asyncpg and aiohttp: only when a command runs
    from worker.scheduling.replay import FailureRow


_COLUMNS = ("id", "failed_at", "job_id", "error", "status", "attempts", "replayed_by", "url")


def parse_since(text: str) -> datetime:
    """``--since``: a duration back from now (``2h``, ``1d``) or an ISO-8601 time (UTC if naive)."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 2h, 1d) nor an ISO-8601 time"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _as_json(row: FailureRow) -> bytes:
    return orjson.dumps(dataclasses.asdict(row))  # failed_at as RFC 3339


def _table(rows: list[FailureRow]) -> str:
    cells = [
        [
            str(r.id),
            format_when(r.failed_at),
            r.job_id,
            r.error,
            "" if r.status is None else str(r.status),
            str(r.attempts),
            r.replayed_by or "",
            r.url,
        ]
        for r in rows
    ]
    return format_table(_COLUMNS, cells)


def cmd_list(args: argparse.Namespace) -> int:
    from worker.scheduling.replay import list_failures

    rows = with_pool(
        lambda pool: list_failures(
            pool, job_id=args.job, kind=args.kind, since=args.since, limit=args.limit
        )
    )
    if args.json:
        out = sys.stdout.buffer
        for row in rows:
            out.write(_as_json(row) + b"\n")
        out.flush()
    elif rows:
        print(_table(rows))
    else:
        print("no failures match", file=sys.stderr)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    from worker.engine import store
    from worker.queue.client import open_queue
    from worker.scheduling.replay import ReplayResult, replay_failures
    from worker.settings import get_settings

    settings = get_settings()
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

    try:
        result = asyncio.run(go())
    except RedisError as exc:
        # Failures already claimed stay claimed; the next replay re-enqueues their jobs.
        print(f"harvester: Redis is unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
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
    commands = failures.add_subparsers(dest="failures_command", required=True)

    p = commands.add_parser("list", help="failure rows, newest first")
    p.add_argument("--job", default=None, help="only this job id")
    p.add_argument("--kind", default=None, help="only this error kind (timeout, http_status...)")
    p.add_argument(
        "--since", type=parse_since, default=None, help="a duration (2h, 1d) or an ISO-8601 time"
    )
    p.add_argument("--limit", type=positive, default=100, help="rows to show (100)")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(func=cmd_list)

    p = commands.add_parser("replay", help="retry failures not yet replayed, as new jobs")
    p.add_argument(
        "--kind", action="append", default=None, help="only this error kind (repeatable)"
    )
    p.add_argument(
        "--transient", action="store_true", help="only timeouts, connection errors, 5xx, 429..."
    )
    p.add_argument(
        "--since", type=parse_since, default=None, help="a duration (2h, 1d) or an ISO-8601 time"
    )
    p.add_argument("--job", default=None, help="only failures of this job id")
    p.add_argument("--batch-size", type=positive, default=None, help="URLs per new job (1000)")
    p.add_argument(
        "--limit", type=positive, default=10_000, help="failure rows to replay at most (10000)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="say what would be replayed, change nothing"
    )
    p.set_defaults(func=cmd_replay)
