"""`make bench`: harvester end to end against the raw aiohttp ceiling and the naive baseline.

Starts its own upstream (nginx if on PATH, else granian), its own Postgres and Valkey (embedded;
BENCH_DATABASE_URL or --database-url names a Postgres server to use instead, where the bench
works in a database of its own, `bench.database`; several servers, `embedded` among them, are
each measured in the same repetitions, one table each; --redis-url a Redis), then for each body
size measures, interleaved and repeated (medians are reported):

  ceiling      raw aiohttp client, harvester's session settings, no Redis, no Postgres
  harvester    jobs through Redis, `harvester worker --burst`, until every row is committed
  naive        the seed tutorial's pattern through arq (see bench/naive.py)

plus harvester with 2 worker processes (two `harvester worker` commands, and one `harvester
worker --processes 2`) and with batches of 100, 1,000 and 10,000 URLs, and
against a JSON API upstream (`bench.api`, granian):

  api plain    plain GETs, batches of 1,000
  api records  plain GETs of bodies holding 50 records each, with a job's ``records``: each
               body extracted and its records upserted (all new), batches of 1,000; reported
               as URLs/s and records/s, compared with api plain
  api auth+pages  walks of 10 pages following `Link: rel="next"`, each page signed by a bearer
               credential profile, batches of 100 walks (1,000 pages): the same number of rows,
               each page a row; compared with api plain

Every run also reports CPU per URL (user + system, start-up included) of the process under test
(the worker's processes, or the ceiling's client), of the Postgres server (every process of it,
`bench.procs`) and of the upstream server that served the run.

Prints a table and writes bench/results/bench-<time>.json, per server. It is a benchmark, not a
test.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import orjson

from bench import database
from bench import upstream as upstream_mod
from bench.harness import PROFILE_FORMATS, RECORDS_KB, ROOT, WALK_PAGES, Bench
from bench.report import Run, median_run, ratios, table, us
from worker.devtools.embedded import EmbeddedRedis
from worker.engine.migrate import migrate


def _plan(b: Bench, sizes: list[int]) -> list[tuple[str, Callable[[], Run]]]:
    plan: list[tuple[str, Callable[[], Run]]] = []
    for kb in sizes:
        plan += [
            (f"ceiling {kb}", lambda kb=kb: b.ceiling(kb)),
            (f"harvester {kb} b1000", lambda kb=kb: b.harvester(kb, 1000)),
            (f"naive {kb} b1000", lambda kb=kb: b.naive(kb, 1000)),
            (f"harvester2 {kb} b1000", lambda kb=kb: b.harvester(kb, 1000, workers=2)),
            (f"harvester p2 {kb} b1000", lambda kb=kb: b.harvester(kb, 1000, processes=2)),
            (f"harvester {kb} b100", lambda kb=kb: b.harvester(kb, 100)),
            (f"harvester {kb} b10000", lambda kb=kb: b.harvester(kb, 10000)),
            (f"api plain {kb}", lambda kb=kb: b.api(kb)),
            (f"api auth+pages {kb}", lambda kb=kb: b.api(kb, WALK_PAGES)),
        ]
        if kb == RECORDS_KB:
            plan.append((f"api records {kb}", lambda kb=kb: b.api_records(kb)))
    return plan


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=20_000, help="URLs per measurement (20000)")
    parser.add_argument("--sizes", default="1,16", help="body sizes in KiB (1,16)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument("--concurrency", type=int, default=64, help="HARVESTER_CONCURRENCY (64)")
    parser.add_argument(
        "--only", default="", help="comma-separated plan entries to run (substring)"
    )
    parser.add_argument("--upstream", choices=["nginx", "granian"], default=None)
    database.add_servers_argument(parser)
    parser.add_argument("--redis-url", default=None, help="a Redis database to use (flushed)")
    parser.add_argument("--out", default=str(ROOT / "results"))
    parser.add_argument(
        "--profile",
        metavar="DIR",
        default=os.environ.get("BENCH_PROFILE") or None,
        help="run every harvester worker under py-spy, one profile per worker into DIR, e.g. "
        "bench/profiles (default: BENCH_PROFILE)",
    )
    parser.add_argument(
        "--profile-format",
        choices=sorted(PROFILE_FORMATS),
        default="flamegraph",
        help="py-spy's output: flamegraph (SVG, the default), speedscope or raw (collapsed stacks)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a harvester setting for every harvester run, e.g. --set max_jobs=8 (repeatable)",
    )
    return parser


def main() -> int:
    args = _parser().parse_args()
    args.settings = dict(item.split("=", 1) for item in args.set)
    sizes = [int(x) for x in args.sizes.split(",")]
    try:
        measured = _measure(args, sizes)
    except database.BenchDatabaseError as exc:
        print(f"python -m bench: {exc}", file=sys.stderr)
        return 2
    for runs, info in measured:
        print()
        print(
            f"upstream: {info['upstream']}; postgres: {info['postgres']}; {os.cpu_count()} CPUs; "
            f"Python {platform.python_version()}; {args.urls} URLs per run; medians of "
            f"{args.repeat}; settings {args.settings or 'defaults'}"
        )
        print(table(runs))
        print(f"\nwrote {_write(args, runs, info)}")
    return 0


def _measure(args: argparse.Namespace, sizes: list[int]) -> list[tuple[list[Run], dict[str, str]]]:
    """Start the servers, run the plan ``args.repeat`` times on each Postgres server named,
    interleaved (each repetition runs the plan on every server in turn); per server, the
    median runs and what the servers were."""
    with tempfile.TemporaryDirectory(prefix="harvester-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        up = upstream_mod.start(root / "upstream", sizes, prefer=args.upstream)
        stack.callback(up.stop)
        api = upstream_mod.start_api()
        stack.callback(api.stop)
        if args.redis_url:
            rurl = args.redis_url
        else:
            rd = EmbeddedRedis(root / "valkey")
            stack.callback(rd.stop)
            rurl = rd.start()
        benches: list[Bench] = []
        described: list[str] = []
        for n, url in enumerate(database.servers_of(args.database_url)):
            pg = stack.enter_context(database.server(url, root / f"postgres-{n}"))
            asyncio.run(migrate(pg.url))
            described.append(asyncio.run(database.describe(pg.url, embedded=pg.embedded)))
            postmaster = asyncio.run(database.postmaster(pg.url))
            benches.append(Bench(args, up, api, pg.url, rurl, root, postmaster))
        runs = _repeat(args, [(b, _plan(b, sizes)) for b in benches])
        return [
            (r, {"upstream": up.kind, "postgres": d}) for r, d in zip(runs, described, strict=True)
        ]


Plan = list[tuple[str, Callable[[], Run]]]


def _repeat(args: argparse.Namespace, plans: list[tuple[Bench, Plan]]) -> list[list[Run]]:
    """Each repetition runs every server's plan in turn; per server, the median runs."""
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        plans = [(b, [(k, f) for k, f in plan if any(w in k for w in wanted)]) for b, plan in plans]
    samples: list[dict[str, list[Run]]] = [{k: [] for k, _ in plan} for _, plan in plans]
    many = len(plans) > 1
    for rep in range(args.repeat):
        for n, (bench, plan) in enumerate(plans):
            bench.measure_startup([k for k, _ in plan])
            where = f"pg{n + 1} " if many else ""
            for key, fn in plan:
                run = fn()
                samples[n][key].append(run)
                print(
                    f"[{rep + 1}/{args.repeat}] {where}{key:<24} {run.urls_per_s:8.0f} URLs/s "
                    f"rss {run.peak_rss_mib:.0f} MiB CPU/URL {run.run_us_per_url:.0f} µs "
                    f"(pg {us(run.postgres_us_per_url)}, up {us(run.upstream_us_per_url)})",
                    flush=True,
                )
    return [[median_run(v) for v in server.values()] for server in samples]


def _write(args: argparse.Namespace, runs: list[Run], info: dict[str, str]) -> Path:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("bench-%Y%m%dT%H%M%S")
    out = out_dir / f"{stem}.json"
    n = 1
    while out.exists():  # a second server's results, written in the same second
        n += 1
        out = out_dir / f"{stem}-{n}.json"
    out.write_bytes(
        orjson.dumps(
            {
                **info,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "urls": args.urls,
                "repeat": args.repeat,
                "concurrency": args.concurrency,
                "settings": args.settings,
                "runs": [
                    asdict(r)
                    | {
                        "urls_per_s": r.urls_per_s,
                        "cpu_us_per_url": r.cpu_us_per_url,
                        "run_cpu_us_per_url": r.run_us_per_url,
                        "postgres_cpu_us_per_url": r.postgres_us_per_url,
                        "upstream_cpu_us_per_url": r.upstream_us_per_url,
                        "records_per_s": r.records_per_s,
                    }
                    for r in runs
                ],
                "ratios": ratios(runs),
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
