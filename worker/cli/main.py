"""The ``harvester`` command: migrate, worker, enqueue, health, api, demo, and the subcommand
modules it adds (status, sources, failures)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from worker.cli.util import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_UNHEALTHY,
    positive,
    read_urls,
)
from worker.errors import ConfigError, HarvesterError, ListenError, StoreError
from worker.logs import configure
from worker.settings import Settings, get_settings

log = logging.getLogger("harvester.cli")


def _install_uvloop(settings: Settings) -> None:
    # Must happen before arq's Worker creates its loop.
    if not settings.uvloop:
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_migrate(args: argparse.Namespace) -> int:
    from worker.engine.migrate import migrate

    settings = get_settings()
    applied = asyncio.run(migrate(settings.database_url))
    print(
        f"applied {len(applied)} migration(s)"
        + "".join(f"\n  {m.version:03d}_{m.name}" for m in applied)
    )
    return 0


def _share_metrics(settings: Settings) -> None:
    """Record metrics in the host's shared directory, so that several workers on one host serve
    one endpoint (see `worker.ops.metrics`). prometheus_client chooses its mode when first
    imported, from this variable: so it is set here, before the worker is imported."""
    if settings.metrics_port is None:
        return
    directory = settings.metrics_shared_dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def cmd_worker(args: argparse.Namespace) -> int:
    from redis.exceptions import RedisError

    settings = get_settings()
    _share_metrics(settings)
    from worker.runtime.app import RedisUnavailableError, create_worker

    _install_uvloop(settings)
    worker = create_worker(settings, burst=args.burst)
    try:
        worker.run()
    except (RedisUnavailableError, RedisError) as exc:
        # Exit non-zero so the process manager restarts us; queued jobs stay in Redis.
        log.error("worker.redis_unavailable", extra={"error": str(exc)})  # noqa: TRY400
        print(f"harvester: Redis is unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    import socket

    from worker.ops.status import judge_health
    from worker.queue.client import open_queue
    from worker.queue.heartbeat import WorkerState, read_workers

    # A health check must answer quickly: do not ride out a Redis outage here.
    settings = get_settings().model_copy(update={"redis_retry_time": 0.0})

    async def go() -> list[WorkerState]:
        async with open_queue(settings) as redis:
            return await read_workers(redis, settings.queue)

    host = None if args.all else socket.gethostname()
    verdict = judge_health(asyncio.run(go()), settings.queue, host, args.min)
    print("\n".join(verdict.lines))
    return 0 if verdict.healthy else EXIT_UNHEALTHY


def cmd_enqueue(args: argparse.Namespace) -> int:
    from worker.queue.client import JobIdTakenError, enqueue_urls, open_queue

    settings = get_settings()

    async def go(stream: Iterable[str]) -> list[str]:
        async with open_queue(settings) as redis:
            return await enqueue_urls(
                redis,
                read_urls(stream),
                batch_size=args.batch_size,
                source=args.source,
                job_id_prefix=args.job_id_prefix,
            )

    try:
        if args.file == "-":
            job_ids = asyncio.run(go(sys.stdin))
        else:
            with open(args.file, encoding="utf-8") as fh:
                job_ids = _with_progress(fh, Path(args.file).stat().st_size, go)
    except JobIdTakenError as exc:
        for job_id in exc.enqueued:
            print(job_id)
        print(f"harvester: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for job_id in job_ids:
        print(job_id)
    return 0


def _with_progress(
    fh: TextIO, size: int, go: Callable[[Iterable[str]], Coroutine[Any, Any, list[str]]]
) -> list[str]:
    """Run ``go`` on the file's lines, with a progress bar on stderr when that is a terminal
    (quiet when piped or redirected, so scripts see only the job ids)."""
    from rich.console import Console
    from rich.progress import Progress

    console = Console(stderr=True)
    if not console.is_terminal:
        return asyncio.run(go(fh))
    with Progress(console=console) as progress:
        task = progress.add_task("enqueueing", total=size)

        def lines() -> Iterator[str]:
            for line in fh:
                progress.advance(task, len(line.encode()))
                yield line

        return asyncio.run(go(lines()))


def cmd_api(args: argparse.Namespace) -> int:
    from worker.ops import api

    settings = get_settings()
    _install_uvloop(settings)
    api.run(settings, args.host or settings.api_host, args.port or settings.api_port)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from worker.devtools.demo import run_demo
    except ImportError:
        print(
            "harvester: the demo runs from a source checkout (make demo); it is not part of "
            "an installed harvester",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return run_demo(
        Path(args.dir), count=args.urls, batch_size=args.batch_size, n_sources=args.sources
    )


def build_parser() -> argparse.ArgumentParser:
    from worker.cli import failures as cli_failures
    from worker.cli import sources as cli_sources
    from worker.cli import status as cli_status

    parser = argparse.ArgumentParser(
        prog="harvester", description="Fetch batches of JSON URLs from arq jobs into Postgres."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply pending sql/ migrations to DATABASE_URL")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run the arq worker")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("enqueue", help="enqueue URLs (one a line) as fetch_batch jobs")
    p.add_argument("file", help="a file of URLs, or - for standard input")
    p.add_argument("--batch-size", type=positive, default=1000, help="URLs per job (1000)")
    p.add_argument("--source", default=None, help="a label stored with every row")
    p.add_argument(
        "--job-id-prefix",
        default=None,
        help="make job ids <prefix>-<n>, so enqueueing the same file twice is a no-op",
    )
    p.set_defaults(func=cmd_enqueue)

    p = sub.add_parser("health", help="exit 0 if every worker process on this host is alive")
    p.add_argument("--all", action="store_true", help="check the workers of every host")
    p.add_argument("--min", type=positive, default=1, help="at least this many alive (1)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("api", help="serve the HTTP intake (POST /batches, GET /batches/ID, ...)")
    p.add_argument("--host", default=None, help="bind address (HARVESTER_API_HOST, 127.0.0.1)")
    p.add_argument("--port", type=positive, default=None, help="port (HARVESTER_API_PORT, 8080)")
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("demo", help="run everything on embedded servers and print a summary")
    p.add_argument("--urls", type=positive, default=5000, help="how many URLs (5000)")
    p.add_argument("--batch-size", type=positive, default=500, help="URLs per job (500)")
    p.add_argument(
        "--sources", type=int, default=300, help="scheduled sources to poll twice (300; 0: none)"
    )
    p.add_argument("--dir", default=".harvester/demo", help="where the servers keep their files")
    p.set_defaults(func=cmd_demo)
    cli_status.add_parser(sub)
    cli_sources.add_parser(sub)
    cli_failures.add_parser(sub)
    return parser


# How an error that reaches the command line is said, and its exit code (others: 2).
_EXITS: dict[type[HarvesterError], tuple[str, int]] = {
    ConfigError: ("", EXIT_CONFIG),
    StoreError: ("Postgres is unavailable: ", EXIT_UNAVAILABLE),
    ListenError: ("", EXIT_UNAVAILABLE),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        configure(settings.log_level, settings.log_format)
        return int(args.func(args))
    except HarvesterError as exc:
        prefix, code = next(
            (said for kind, said in _EXITS.items() if isinstance(exc, kind)), ("", EXIT_CONFIG)
        )
        print(f"harvester: {prefix}{exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130
