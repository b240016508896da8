"""``harvester status [--json] [--watch]``: the queue, the workers and recent work on one screen."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
from rich.console import Console
from rich.live import Live

from worker.ops.screen import render


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
            if not args.watch:
                status = await gather(settings, redis, pool)
                if args.json:
                    sys.stdout.buffer.write(orjson.dumps(status.as_dict()) + b"\n")
                else:
                    console.print(render(status))
                return
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    live.update(render(await gather(settings, redis, pool)), refresh=True)
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
    mode.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (2)")
    p.set_defaults(func=cmd_status)
