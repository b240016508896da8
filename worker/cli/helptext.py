"""What each command's ``--help`` says below its options: the environment variables it reads and
an example. Kept in one table, so every command says it the same way and a test can check that
none is missing."""

from __future__ import annotations

import argparse
import textwrap
from typing import Final

_EVERY = "(and the other HARVESTER_* settings it uses: docs/configuration.md)"

# command path -> (the variables it reads, examples)
EPILOGS: Final[dict[str, tuple[str, tuple[str, ...]]]] = {
    "migrate": ("DATABASE_URL", ("harvester migrate",)),
    "worker": (
        "DATABASE_URL, REDIS_URL, HARVESTER_QUEUE, HARVESTER_CONCURRENCY, HARVESTER_MAX_JOBS, "
        f"HARVESTER_PROCESSES, HARVESTER_REDIS_RETRY_TIME {_EVERY}",
        (
            "harvester worker",
            "HARVESTER_CONCURRENCY=32 harvester worker --burst",
            "harvester worker --processes 2   # one worker process per core",
        ),
    ),
    "enqueue": (
        "REDIS_URL, HARVESTER_QUEUE, HARVESTER_MAX_BATCH_URLS (the largest --batch-size), "
        "HARVESTER_MAX_JOB_BYTES (larger batches are split), HARVESTER_WEBHOOK_SECRET (with "
        "--notify-url)",
        (
            "harvester enqueue urls.txt --batch-size 500 --source catalog",
            "harvester enqueue urls.txt --job-id-prefix catalog-2026-05-01   # idempotent",
            "harvester enqueue --requests searches.jsonl --method POST --header 'Accept: a/json'",
            "harvester enqueue orders.txt --auth crm --paginate link --max-pages 50",
            "harvester enqueue urls.txt --notify-url https://hooks.example.com/harvester",
        ),
    ),
    "health": (
        "REDIS_URL, HARVESTER_QUEUE",
        ("harvester health || echo 'no worker on this host'",),
    ),
    "api": (
        "DATABASE_URL, REDIS_URL, HARVESTER_QUEUE, HARVESTER_API_HOST, HARVESTER_API_PORT, "
        f"HARVESTER_API_TOKEN {_EVERY}",
        ("HARVESTER_API_TOKEN=$(openssl rand -hex 24) harvester api --port 8080",),
    ),
    "demo": (
        "none of DATABASE_URL and REDIS_URL: the demo starts its own Postgres and Redis "
        "(HARVESTER_* settings still apply)",
        ("harvester demo --urls 1000",),
    ),
    "status": (
        "DATABASE_URL, REDIS_URL, HARVESTER_QUEUE",
        ("harvester status --watch", "harvester status --json"),
    ),
    "sources add": (
        "DATABASE_URL (the worker polls due sources every HARVESTER_SOURCES_POLL_SECONDS)",
        (
            "harvester sources add https://api.example.com/v1/rates --every 15m --source rates",
            "harvester sources add --from-file feeds.txt --every 1h30m",
            "harvester sources add https://api.example.com/v1/changes --every 5m "
            "--header 'Accept: application/vnd.x+json' --since-param since "
            "--since-path meta.next_since",
        ),
    ),
    "sources list": ("DATABASE_URL", ("harvester sources list --source rates",)),
    "sources enable": ("DATABASE_URL", ("harvester sources enable 12 https://api.example.com/x",)),
    "sources disable": ("DATABASE_URL", ("harvester sources disable 12",)),
    "sources remove": ("DATABASE_URL", ("harvester sources remove https://api.example.com/x",)),
    "failures list": (
        "DATABASE_URL",
        ("harvester failures list --kind timeout --kind connect --since 1d",),
    ),
    "failures replay": (
        "DATABASE_URL, REDIS_URL, HARVESTER_QUEUE, HARVESTER_MAX_BATCH_URLS",
        ("harvester failures replay --transient --since 2h --dry-run",),
    ),
    "webhooks list": (
        "DATABASE_URL",
        ("harvester webhooks list --failed", "harvester webhooks list --state pending --json"),
    ),
    "webhooks redeliver": (
        "DATABASE_URL (workers with HARVESTER_WEBHOOK_SECRET deliver them)",
        ("harvester webhooks redeliver 17 18", "harvester webhooks redeliver --failed"),
    ),
    "hosts set": (
        "REDIS_URL, HARVESTER_QUEUE (workers read the policies every few seconds)",
        (
            "harvester hosts set api.example.com --rps 5 --concurrency 4",
            "harvester hosts set cdn.example.com --rps 0   # not paced, whatever the default",
        ),
    ),
    "hosts list": (
        "REDIS_URL, HARVESTER_QUEUE, HARVESTER_HOST_RPS (the default shown)",
        ("harvester hosts list --json",),
    ),
    "hosts clear": ("REDIS_URL, HARVESTER_QUEUE", ("harvester hosts clear api.example.com",)),
}

MAIN_EPILOG: Final = """\
Every command reads DATABASE_URL, REDIS_URL and HARVESTER_* settings from the environment
(docs/configuration.md); `harvester COMMAND --help` says which, with an example.

exit codes:
  0  done
  1  the answer is no: unhealthy, nothing matched, a job id already taken
  2  invalid configuration, arguments or input, or a database that needs `harvester migrate`
  3  Redis or Postgres unavailable, or a port in use
"""


def epilog(reads: str, examples: tuple[str, ...]) -> str:
    """The text below a command's options."""
    lines = ["environment:", textwrap.fill(reads, 88, initial_indent="  ", subsequent_indent="  ")]
    lines += ["", "example:" if len(examples) == 1 else "examples:"]
    lines += [f"  {example}" for example in examples]
    return "\n".join(lines)


def apply(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give ``parser`` and every subcommand below it the epilog of `EPILOGS` (as written: line
    breaks kept)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    said = EPILOGS.get(" ".join(path))
    if said is not None:
        parser.epilog = epilog(*said)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                apply(sub, (*path, name))
