"""``harvester hosts set|list|clear``: the per-host policies every worker sharing the Redis
enforces (see `worker.queue.hostlimits`)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import orjson

from worker.cli.util import EXIT_FAILED, command_settings, positive, print_table, table
from worker.engine.pacing import (
    MAX_CONCURRENCY,
    MAX_RPS,
    MIN_RPS,
    HostPolicy,
    host_key,
    valid_rps,
)
from worker.errors import UsageError

if TYPE_CHECKING:  # redis loads only when a command runs
    from redis.asyncio import Redis

T = TypeVar("T")


def rps(text: str) -> float:
    """argparse type: requests per second, 0 (not paced) or `MIN_RPS` to `MAX_RPS`."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of requests per second"
        ) from None
    if not valid_rps(value):
        raise argparse.ArgumentTypeError(
            f"must be 0 (not paced) or from {MIN_RPS:g} to {MAX_RPS:g}, not {text}"
        )
    return value


def concurrency(text: str) -> int:
    """argparse type: requests in flight at once, from 1 to `MAX_CONCURRENCY`."""
    value = positive(text)
    if value > MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_CONCURRENCY}, not {text}")
    return value


def _host(text: str) -> str:
    try:
        return host_key(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _with_redis(work: Callable[[Redis, str], Awaitable[T]]) -> T:
    from worker.queue.client import open_queue

    settings = command_settings()

    async def go() -> T:
        async with open_queue(settings) as redis:
            return await work(redis, settings.queue)

    return asyncio.run(go())


def describe(policy: HostPolicy) -> str:
    """A policy in words: ``5 requests/s, at most 4 in flight``."""
    rate = (
        "the default rate (HARVESTER_HOST_RPS)"
        if policy.rps is None
        else "not paced"
        if policy.rps == 0
        else f"{policy.rps:g} requests/s"
    )
    return rate + (
        "" if policy.concurrency is None else f", at most {policy.concurrency} in flight"
    )


def cmd_set(args: argparse.Namespace) -> int:
    from worker.queue.hostlimits import set_policy

    host = _host(args.host)
    if args.rps is None and args.concurrency is None:
        raise UsageError("hosts set needs --rps, --concurrency or both")
    change = HostPolicy(args.rps, args.concurrency)
    policy = _with_redis(lambda redis, queue: set_policy(redis, queue, host, change))
    print(f"{host}: {describe(policy)} (workers apply it within a few seconds)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from worker.queue.hostlimits import read_pauses, read_policies

    async def read(redis: Redis, queue: str) -> tuple[dict[str, HostPolicy], dict[str, float]]:
        return await read_policies(redis, queue), await read_pauses(redis, queue)

    policies, pauses = _with_redis(read)
    hosts = sorted({*policies, *pauses})
    if args.json:
        for host in hosts:
            p = policies.get(host, HostPolicy())
            row = {"host": host, **p.as_dict(), "paused_s": pauses.get(host)}
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        return 0
    default = command_settings().host_rps
    title = f"hosts (others: {f'{default:g} requests/s' if default else 'not paced'})"
    t = table("host*", "rps", "in flight", "paused", title=title)
    for host in hosts:
        p = policies.get(host, HostPolicy())
        t.add_row(
            host,
            "default" if p.rps is None else f"{p.rps:g}",
            "-" if p.concurrency is None else str(p.concurrency),
            f"{pauses[host]:g} s" if host in pauses else "",
        )
    print_table(t)
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    from worker.queue.hostlimits import clear_policies

    if args.all == bool(args.hosts):
        raise UsageError("hosts clear needs HOST... or --all (one of them)")
    hosts = None if args.all else [_host(h) for h in args.hosts]
    n = _with_redis(lambda redis, queue: clear_policies(redis, queue, hosts))
    print(f"cleared {n} host policy(ies); those hosts get the default rate")
    return 0 if n or args.all else EXIT_FAILED


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hosts`` and its subcommands to the ``harvester`` parser."""
    p = sub.add_parser("hosts", help="per-host rate and in-flight limits, for every worker")
    cmds = p.add_subparsers(
        dest="hosts_command", metavar="COMMAND", title="commands", required=True
    )

    s = cmds.add_parser("set", help="set a host's requests per second and/or in-flight limit")
    s.add_argument("host", metavar="HOST", help="a host name or IP address: api.example.com")
    s.add_argument(
        "--rps", type=rps, default=None, metavar="R", help="requests per second (0: not paced)"
    )
    s.add_argument(
        "--concurrency",
        type=concurrency,
        default=None,
        metavar="N",
        help="requests in flight at once, across all workers",
    )
    s.set_defaults(func=cmd_set)

    ls = cmds.add_parser("list", help="the hosts with a policy or a pause in force")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)

    c = cmds.add_parser("clear", help="remove hosts' policies (they get the default again)")
    c.add_argument("hosts", nargs="*", metavar="HOST")
    c.add_argument("--all", action="store_true", help="remove every host's policy")
    c.set_defaults(func=cmd_clear)
