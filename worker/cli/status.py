"""``harvester status [--json] [--wide] [--watch [--interval S]]``: the queue, the workers and
recent work on one screen, fitted to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from typing import TYPE_CHECKING

import orjson
from rich.console import Console, Group
from rich.live import Live

from worker.ops.screen import render

if TYPE_CHECKING:
    from worker.ops.status import Status

MIN_INTERVAL_S = 0.5


def interval(text: str) -> float:
    """argparse type: seconds between refreshes, at least `MIN_INTERVAL_S`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < MIN_INTERVAL_S:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_INTERVAL_S} seconds, not {text}")
    return value


def _screen(console: Console, status: Status, wide: bool) -> Group:
    """The screen for this console: fitted to a terminal's height (a line is left for the
    prompt), whole when written to a file or a pipe."""
    height = console.size.height - 1 if console.is_terminal else None
    return render(status, wide=wide, width=console.size.width, height=height)


def cmd_status(args: argparse.Namespace) -> int:
    from worker.engine import store
    from worker.ops.status import gather
    from worker.queue.client import open_queue
    from worker.settings import get_settings

    # A status screen must answer quickly: do not ride out a Redis outage here.
    settings = get_settings().model_copy(update={"redis_retry_time": 0.0})
    console = Console()

    async def go() -> None:
        async with store.open_pool(settings) as pool, open_queue(settings) as redis:
            if args.json:
                status = await gather(settings, redis, pool)
                sys.stdout.buffer.write(orjson.dumps(status.as_dict()) + b"\n")
                return
            if not args.watch or not console.is_terminal:
                # Not a terminal: one plain snapshot per interval, for a log or a pipe.
                while True:
                    console.print(_screen(console, await gather(settings, redis, pool), args.wide))
                    console.file.flush()
                    if not args.watch:
                        return
                    await asyncio.sleep(args.interval)
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    status = await gather(settings, redis, pool)
                    live.update(_screen(console, status, args.wide), refresh=True)
                    await asyncio.sleep(args.interval)

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        return 0
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` to the ``harvester`` parser."""
    p = sub.add_parser("status", help="queue, workers, recent jobs, rates and failures at a glance")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    mode.add_argument(
        "--watch",
        action="store_true",
        help="refresh until interrupted (not a terminal: one snapshot per interval)",
    )
    p.add_argument("--wide", action="store_true", help="show job ids and hosts whole")
    p.add_argument(
        "--interval",
        type=interval,
        default=2.0,
        help=f"seconds between refreshes (2; at least {MIN_INTERVAL_S})",
    )
    p.set_defaults(func=cmd_status)
