"""``harvester status [--json] [--watch]``: the queue, the workers and recent work on one screen."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker.logs import safe

if TYPE_CHECKING:
    from worker.status import Status


def _t(value: object, style: str = "") -> Text:
    """Untrusted text (job ids, hosts, kinds: anything from Redis or Postgres) as a plain cell:
    never read as rich markup, escape sequences shown as escapes."""
    return Text(safe(str(value)), style=style)


def _count(summary: dict[str, object], *keys: str) -> Text:
    """A summary's count (a number, or a dict of numbers by kind, summed); empty without a
    summary, ``?`` for a summary that is not what a job writes."""
    if not summary:
        return Text("")
    total = 0
    for key in keys:
        value = summary.get(key, 0)
        numbers = value.values() if isinstance(value, dict) else [value]
        if not all(type(n) is int for n in numbers):
            return Text("?")
        total += sum(numbers)
    return Text(str(total))


def render(s: Status) -> Group:
    """The status screen as rich renderables. Every value read from Redis or Postgres goes
    through `_t`, so a job id such as ``[/x]`` or one holding ESC cannot break or drive it."""
    oldest = "-" if s.oldest_ready_age_s is None else f"{s.oldest_ready_age_s:.1f} s"
    head = Text.assemble(
        ("harvester ", "bold"),
        f"queue {safe(repr(s.queue))} at {s.at}\n",
        f"queued {s.queued} (ready {s.ready}, deferred {s.deferred}), ",
        f"oldest ready job waiting {oldest}, ",
        f"in progress {len(s.in_progress)}, ",
        (f"{s.urls_per_second:.1f} URLs/s", "bold"),
        " over the last minute",
    )
    workers = Table(title="workers", title_justify="left", expand=False)
    for col in ("host", "heartbeat", "expires in"):
        workers.add_column(col)
    for w in s.workers:
        workers.add_row(_t(w.host), _t(w.heartbeat), f"{w.expires_in_s:.0f} s")
    if not s.workers:
        workers.add_row(Text("none reporting", style="red"), "", "")

    rate = Table(title="URLs landed", title_justify="left")
    rate.add_column("minute (UTC)")
    rate.add_column("URLs", justify="right")
    for minute, n in s.urls_per_minute:
        rate.add_row(_t(minute), str(n))

    fails = Table(title="failures, last hour", title_justify="left")
    fails.add_column("kind")
    fails.add_column("count", justify="right")
    for kind, n in s.failures_last_hour.items():
        fails.add_row(_t(kind), str(n))

    jobs = Table(title="recent jobs", title_justify="left")
    for col in ("job", "result", "documents", "failed", "unchanged", "seconds", "finished"):
        jobs.add_column(col, justify="left" if col in ("job", "result", "finished") else "right")
    for j in s.recent_jobs:
        summ = j.summary or {}
        result = {True: _t("ok"), False: _t("failed", "red"), None: _t("running")}[j.success]
        jobs.add_row(
            _t(j.job_id),
            result,
            _count(summ, "documents"),
            _count(summ, "failures"),
            _count(summ, "unchanged", "not_modified"),
            _t(summ.get("seconds", "")),
            _t((j.finished_at or "")[11:19]),
        )
    parts: list[Table | Text] = [head, workers, jobs, rate, fails]
    if s.sources.get("total"):
        src = s.sources
        parts.append(
            Text(
                f"sources: {src['total']} registered, {src['due']} due, "
                f"{src['polling']} being polled, {src['failing']} failing"
            )
        )
    if s.in_progress:
        parts.append(_t("in progress: " + ", ".join(s.in_progress)))
    return Group(*parts)


def cmd_status(args: argparse.Namespace) -> int:
    from worker import store
    from worker.client import open_queue
    from worker.settings import get_settings
    from worker.status import gather

    # A status screen must answer quickly: do not ride out a Redis outage here.
    settings = get_settings().model_copy(update={"redis_retry_time": 0.0})
    console = Console()

    async def go() -> None:
        pool = await store.create_pool(settings)
        try:
            async with open_queue(settings) as redis:
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
        finally:
            await store.close_pool(pool)

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
