"""The ``harvester`` command: migrate, worker, health, api, demo, and the subcommand modules it
adds (enqueue, status, sources, failures, hosts, webhooks)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from worker.cli import helptext
from worker.cli.util import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_UNHEALTHY,
    positive,
    process_count,
)
from worker.errors import (
    HarvesterError,
    ListenError,
    RedisUnavailableError,
    StoreError,
)
from worker.logs import configure, redact, safe
from worker.settings import MAX_PROCESSES, Settings, get_settings

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
    processes = settings.processes if args.processes is None else args.processes
    if processes > 1:
        return _supervise(settings, processes, burst=args.burst)
    if args.parent is not None:
        from worker.runtime.supervisor import follow_parent

        if not follow_parent(args.parent):
            log.info("worker.parent_gone", extra={"parent": args.parent})
            return EXIT_OK
    from worker.runtime.app import create_worker

    _install_uvloop(settings)
    worker = create_worker(settings, burst=args.burst)
    _freeze_start_up()
    try:
        worker.run()
    except (RedisUnavailableError, RedisError) as exc:
        # `main` says it and exits 3, so the process manager restarts us; jobs stay in Redis.
        log.error("worker.redis_unavailable", extra={"error": str(exc)})  # noqa: TRY400
        raise
    return 0


def _freeze_start_up() -> None:
    """Put what a worker's start-up made (every imported module's functions, classes, dicts:
    most of the heap, and alive for good) out of the garbage collector's sight. A full
    collection walks every object it tracks, and paginated walks, which keep objects across
    pages, cause more of them: with this, full collections' traversals (dicts, functions) no
    longer show in what a page costs more than a plain GET (docs/performance.md). Garbage is
    collected first, so none is kept for good."""
    gc.collect()
    gc.freeze()


# How long after its grace a stopping child may take to hand back its batches and close, before
# the parent of `--processes` kills it as stuck.
KILL_MARGIN_S: Final = 15.0


def _supervise(settings: Settings, processes: int, *, burst: bool) -> int:
    """Run ``processes`` workers under one parent (`worker.runtime.supervisor`). What the
    parent can check is checked first, so that a configuration error exits 2 once instead of
    every child dying of it."""
    from worker.engine.credentials import load_credentials
    from worker.runtime.supervisor import Supervisor, child_command

    load_credentials(settings.credentials)
    shared = settings.metrics_shared_dir if settings.metrics_port is not None else None
    supervisor = Supervisor(
        processes,
        child_command(burst),
        burst=burst,
        metrics_dir=shared,
        kill_after=settings.shutdown_grace + KILL_MARGIN_S,
    )
    return asyncio.run(supervisor.run())


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
            "harvester: the demo needs the development tools of a source checkout, which an "
            "installed harvester leaves out: run `make demo` in a clone of the repository",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    return run_demo(
        Path(args.dir), count=args.urls, batch_size=args.batch_size, n_sources=args.sources
    )


def build_parser() -> argparse.ArgumentParser:
    from worker.cli import enqueue as cli_enqueue
    from worker.cli import failures as cli_failures
    from worker.cli import hosts as cli_hosts
    from worker.cli import sources as cli_sources
    from worker.cli import status as cli_status
    from worker.cli import webhooks as cli_webhooks

    parser = argparse.ArgumentParser(
        prog="harvester",
        description="Fetch batches of JSON URLs from arq jobs into Postgres.",
        epilog=helptext.MAIN_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"harvester {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    p = sub.add_parser("migrate", help="apply pending sql/ migrations to DATABASE_URL")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run the arq worker")
    p.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    p.add_argument(
        "--processes",
        type=process_count,
        default=None,
        metavar="N",
        help=f"run N worker processes under one parent (HARVESTER_PROCESSES, 1; at most "
        f"{MAX_PROCESSES})",
    )
    # Given by `worker.runtime.supervisor` to its children; not for people.
    p.add_argument("--parent", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    cli_enqueue.add_parser(sub)

    p = sub.add_parser("health", help="exit 0 if every worker process on this host is alive")
    p.add_argument("--all", action="store_true", help="check the workers of every host")
    p.add_argument("--min", type=positive, default=1, help="at least this many alive (1)")
    p.set_defaults(func=cmd_health)

    _add_api(sub)
    _add_demo(sub)
    cli_status.add_parser(sub)
    cli_sources.add_parser(sub)
    cli_failures.add_parser(sub)
    cli_hosts.add_parser(sub)
    cli_webhooks.add_parser(sub)
    helptext.apply(parser)
    return parser


def _add_api(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("api", help="serve the HTTP intake (POST /batches, GET /batches/ID, ...)")
    p.add_argument(
        "--host", default=None, metavar="HOST", help="bind address (HARVESTER_API_HOST, 127.0.0.1)"
    )
    p.add_argument(
        "--port",
        type=positive,
        default=None,
        metavar="PORT",
        help="port (HARVESTER_API_PORT, 8080)",
    )
    p.set_defaults(func=cmd_api)


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run everything on embedded servers and print a summary")
    p.add_argument("--urls", type=positive, default=5000, metavar="N", help="how many URLs (5000)")
    p.add_argument(
        "--batch-size", type=positive, default=500, metavar="N", help="URLs per job (500)"
    )
    p.add_argument(
        "--sources",
        type=int,
        default=300,
        metavar="N",
        help="scheduled sources to poll twice (300; 0: none)",
    )
    p.add_argument(
        "--dir", default=".harvester/demo", metavar="DIR", help="where the servers keep their files"
    )
    p.set_defaults(func=cmd_demo)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harvester")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``harvester`` command; its exit code (docs/cli.md)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        code = _run(args)
        sys.stdout.flush()  # here, not at exit, where a closed pipe could not be handled
    except BrokenPipeError:
        # The reader went away (`| head -1`): the rest has no reader. Say nothing, and keep
        # the interpreter's own last flush from complaining too.
        _silence_stdout()
        return EXIT_OK
    return code


def _run(args: argparse.Namespace) -> int:
    settings: Settings | None = None
    try:
        settings = get_settings()
        configure(settings.log_level, settings.log_format)
        return int(args.func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        problem = _translate(exc, settings)
        if problem is None:
            raise
        message, code = _said(problem, settings)
        # One line, whatever a library put in its message; credentials hidden.
        print(f"harvester: {safe(message)}", file=sys.stderr)
        return code


def _translate(exc: Exception, settings: Settings | None) -> HarvesterError | None:
    """``exc`` as harvester's error, if it is an expected one (library errors that got past a
    command are translated by their boundary's function)."""
    if isinstance(exc, HarvesterError):
        return exc
    if settings is not None:
        from redis.exceptions import RedisError

        if isinstance(exc, RedisError):
            from worker.queue.connection import redis_error

            return redis_error(settings, exc)
    return None


def _said(exc: HarvesterError, settings: Settings | None) -> tuple[str, int]:
    """How an error is said on the command line, and the exit code (docs/cli.md)."""
    from worker.queue.client import JobIdTakenError

    message = str(exc)
    if isinstance(exc, StoreError) and exc.transient:
        if settings is not None and not message.startswith("Postgres is unavailable"):
            where = redact(settings.database_url)
            message = f"Postgres is unavailable at {where} (DATABASE_URL): {message}"
        return message, EXIT_UNAVAILABLE
    if isinstance(exc, RedisUnavailableError | ListenError):
        return message, EXIT_UNAVAILABLE
    if isinstance(exc, JobIdTakenError):
        return message, EXIT_FAILED
    # ConfigError, UsageError, BadJobError, SchemaError, and Postgres refusing a statement.
    return message, EXIT_CONFIG


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # stdout is not a file descriptor (captured in-process): nothing will flush it
