"""``harvester enqueue``: URLs (one a line) or request objects from a file or standard input, as
fetch_batch jobs; a progress bar on a terminal, a warning for URLs that cannot be fetched."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.cli.util import (
    EXIT_OK,
    add_request_arguments,
    command_settings,
    known_profiles,
    positive,
    read_requests,
    read_urls,
    records_fields,
    request_fields,
    url_lines,
)
from worker.errors import UsageError

if TYPE_CHECKING:  # the queue's modules load only when the command runs
    from worker.queue.client import Item
    from worker.queue.payload import FetchBatch


def cmd_enqueue(args: argparse.Namespace) -> int:
    from worker.queue.client import check_prefix, enqueue_batches, open_queue, plan_batches

    settings = command_settings()
    if args.batch_size > settings.max_batch_urls:
        raise UsageError(
            f"--batch-size {args.batch_size} is over HARVESTER_MAX_BATCH_URLS "
            f"({settings.max_batch_urls}): workers refuse larger jobs"
        )
    if (args.file is None) == (args.requests is None):
        raise UsageError("give a FILE of URLs or --requests FILE of request objects (one)")
    check_prefix(args.job_id_prefix)
    shared = request_fields(args.method, args.json, args.header, args.paginate, args.max_pages)
    if args.notify_url is not None:
        shared["notify_url"] = args.notify_url
    shared.update(records_fields(args.records_path, args.records_key))
    path = args.requests or args.file
    job_ids: list[str] = []  # printed even when enqueueing stops half-way
    unfetchable = _Unfetchable()

    profiles = known_profiles()

    async def go(lines: Iterable[str]) -> None:
        name = "standard input" if path == "-" else path
        items = read_requests(lines, name) if args.requests else read_urls(lines)
        batches: Iterable[FetchBatch] = plan_batches(
            unfetchable.noted(items),
            batch_size=args.batch_size,
            source=args.source,
            max_urls=settings.max_batch_urls,
            max_job_bytes=settings.max_job_bytes,
            auth=args.auth,
            profiles=profiles,
            shared=shared,
            max_pages=settings.max_pages,
            webhooks=settings.webhook_secret is not None,
        )
        if args.requests:
            batches = list(batches)  # every request is checked before one is enqueued
        async with open_queue(settings) as redis:
            async for job_id in enqueue_batches(redis, batches, job_id_prefix=args.job_id_prefix):
                job_ids.append(job_id)

    try:
        with url_lines(path) as lines:
            size = None if path == "-" else Path(path).stat().st_size
            _with_progress(lines, size, go)
    finally:
        for job_id in job_ids:
            print(job_id)
    unfetchable.warn()
    return EXIT_OK


class _Unfetchable:
    """URLs that will land as ``invalid_url`` failures (a typo such as ``htps://``): enqueued,
    since every URL of a job gets its outcome, but said at once on standard error."""

    def __init__(self) -> None:
        self.count = 0
        self.first: tuple[str, str] | None = None

    def noted(self, items: Iterable[Item]) -> Iterator[Item]:
        from worker.queue.checks import url_problem

        for item in items:
            url = item if isinstance(item, str) else item.get("url")
            problem = url_problem(url) if isinstance(url, str) else None
            if problem is not None and isinstance(url, str):
                self.count += 1
                self.first = self.first or (url, problem)
            yield item

    def warn(self) -> None:
        if self.first is None:
            return
        from worker.logs import safe

        url, problem = self.first
        print(
            f"harvester: warning: {self.count} URL(s) cannot be fetched as written and will be "
            f"recorded as invalid_url failures; the first, {safe(url)[:200]!r}, {problem}",
            file=sys.stderr,
        )


def _with_progress(
    lines: Iterator[str], size: int | None, go: Callable[[Iterable[str]], Coroutine[Any, Any, None]]
) -> None:
    """Run ``go`` on a file's lines, with a progress bar on stderr when that is a terminal
    (quiet when piped or redirected, so scripts see only the job ids)."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if size is None or not console.is_terminal:
        asyncio.run(go(lines))
        return
    # stdout stays stdout: the job ids are the output, the bar is not.
    with Progress(console=console, redirect_stdout=False, redirect_stderr=False) as progress:
        task = progress.add_task("enqueueing", total=size)

        def advancing() -> Iterator[str]:
            for line in lines:
                progress.advance(task, len(line.encode()))
                yield line

        asyncio.run(go(advancing()))


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``enqueue`` to the ``harvester`` parser."""
    p = sub.add_parser("enqueue", help="enqueue URLs (one a line) as fetch_batch jobs")
    p.add_argument(
        "file", metavar="FILE", nargs="?", help="a file of URLs, or - for standard input"
    )
    p.add_argument(
        "--requests",
        default=None,
        metavar="FILE",
        help='instead of FILE: request objects {"url", "method", "json", "headers"}, as JSON '
        "lines or one JSON array (- for standard input)",
    )
    add_request_arguments(p)
    p.add_argument(
        "--batch-size",
        type=positive,
        default=1000,
        metavar="N",
        help="URLs per job (1000; jobs over HARVESTER_MAX_JOB_BYTES are split)",
    )
    p.add_argument("--source", default=None, metavar="NAME", help="a label stored with every row")
    p.add_argument(
        "--job-id-prefix",
        default=None,
        metavar="PREFIX",
        help="make job ids PREFIX-<n>, so enqueueing the same file twice is a no-op",
    )
    p.add_argument(
        "--auth",
        default=None,
        metavar="PROFILE",
        help="the credential profile (HARVESTER_CREDENTIALS) the worker uses for these URLs",
    )
    p.add_argument(
        "--notify-url",
        default=None,
        metavar="URL",
        help="POST each job's signed summary here when it finishes (HARVESTER_WEBHOOK_SECRET)",
    )
    p.set_defaults(func=cmd_enqueue)
