"""`python -m bench.costs`: what one URL costs Redis, Postgres and the worker's CPU.

The figures behind docs/scaling.md. Starts its own upstream (`bench.upstream`), Postgres
(durable) and Valkey (embedded, unless BENCH_DATABASE_URL or --database-url names a Postgres
server, where it works in a database of its own as `python -m bench` does, or --redis-url a Redis
database, which is flushed), then for each body size and batch size enqueues the URLs, runs
one `harvester worker --burst` until every row is committed, and reads:

  Redis     commands by name and network bytes (`INFO commandstats`, `INFO stats`, reset with
            `CONFIG RESETSTAT` before each phase), for the enqueue and for the worker apart, and
            the memory its keys hold (`MEMORY USAGE` of every key) once queued and once done
  Postgres  WAL bytes (`pg_wal_lsn_diff` of `pg_current_wal_lsn()`), rows inserted, updated and
            deleted per table (`pg_stat_user_tables`), and the size of `documents` on disk
  CPU       user + system CPU of the worker process, and of the Postgres server's processes when
            it runs on this machine (`bench.procs`)

A burst worker on an empty queue is measured first; its start-up and exit are taken off every
case, so the per-URL figures are those of a running worker. Then an idle long-running worker is
watched for --idle seconds: the Redis commands a worker sends when there is nothing to do (arq
polls the queue every HARVESTER_POLL_DELAY). It prints the figures; it writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from bench import database, procs
from bench import upstream as upstream_mod
from worker.devtools.embedded import EmbeddedRedis
from worker.engine.migrate import migrate
from worker.queue.client import enqueue_urls, open_queue
from worker.settings import load_settings

QUEUE = "harvester:costs"
TABLES = ("documents", "fetch_failures", "sources")
# Commands the measurement itself sends; never counted.
OURS = {"info", "config", "flushdb", "ping", "client", "hello", "select"}


@dataclass
class Redis:
    """What Redis did between a `CONFIG RESETSTAT` and an `INFO`."""

    commands: dict[str, int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    memory: int = 0  # bytes the keys take afterwards (MEMORY USAGE of each, summed)
    cpu: float = 0.0  # the server's user + system CPU seconds over the phase

    @property
    def total(self) -> int:
        return sum(self.commands.values())

    def minus(self, other: Redis) -> Redis:
        names = self.commands.keys() | other.commands.keys()
        commands = {n: self.commands.get(n, 0) - other.commands.get(n, 0) for n in names}
        return Redis(
            {n: c for n, c in commands.items() if c},
            self.bytes_in - other.bytes_in,
            self.bytes_out - other.bytes_out,
            self.memory,
            self.cpu - other.cpu,
        )


@dataclass
class Postgres:
    """A snapshot: the WAL position and the rows written so far, per table."""

    lsn: int  # bytes of WAL written since the cluster began
    cpu: float | None  # CPU seconds of the server's processes so far (None: not seen)
    rows: dict[str, tuple[int, int, int]]  # table: (inserted, updated, deleted)


@dataclass
class Worked:
    redis: Redis
    wal: int
    rows: dict[str, tuple[int, int, int]]
    cpu: float  # the worker process's
    seconds: float
    postgres_cpu: float | None  # every Postgres process's, when /proc shows the server


@dataclass
class Case:
    kb: int
    batch: int
    urls: int
    enqueue: Redis
    work: Worked
    documents_bytes: int


class Measure:
    def __init__(self, db: str, rd: str, postmaster: int | None) -> None:
        self.db = db
        self.rd = rd
        self.postmaster = postmaster

    async def reset_redis(self) -> float:
        """Reset the command and network counters; the server's CPU seconds so far."""
        r = aioredis.Redis.from_url(self.rd)
        try:
            await r.config_resetstat()
            cpu = await r.info("cpu")
        finally:
            await r.aclose()
        return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])

    async def read_redis(self) -> Redis:
        r = aioredis.Redis.from_url(self.rd)
        try:
            stats = await r.info("commandstats")
            net = await r.info("stats")
            cpu = await r.info("cpu")
            memory = [await r.memory_usage(k, samples=0) async for k in r.scan_iter(count=1000)]
        finally:
            await r.aclose()
        commands = {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name.removeprefix("cmdstat_").split("|")[0] not in OURS
        }
        return Redis(
            commands,
            int(net["total_net_input_bytes"]),
            int(net["total_net_output_bytes"]),
            sum(m or 0 for m in memory),
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
        )

    async def snapshot(self) -> Postgres:
        conn = await asyncpg.connect(self.db)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            lsn = int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
            found = await conn.fetch(
                "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables "
                "WHERE relname = ANY($1::text[])",
                list(TABLES),
            )
        finally:
            await conn.close()
        rows = {r[0]: (r[1], r[2], r[3]) for r in found}
        pm = self.postmaster
        return Postgres(lsn, None if pm is None else procs.snapshot().seconds(pm), rows)

    async def settled(self, before: Postgres, landed: int) -> Postgres:
        """A snapshot once the worker's row counts have reached the statistics (a backend
        reports them at exit, the collector may take a moment)."""
        deadline = time.monotonic() + 10
        while True:
            after = await self.snapshot()
            done = _delta(before.rows, after.rows).get("documents", (0, 0, 0))[0] >= landed
            if done or time.monotonic() > deadline:
                return after
            await asyncio.sleep(0.1)

    async def empty(self) -> None:
        conn = await asyncpg.connect(self.db)
        try:
            await conn.execute("TRUNCATE documents, fetch_failures, latest_document_refs")
        finally:
            await conn.close()
        r = aioredis.Redis.from_url(self.rd)
        try:
            await r.execute_command("FLUSHDB", "SYNC")  # freed now, so used_memory is settled
        finally:
            await r.aclose()

    async def count_and_size(self) -> tuple[int, int]:
        conn = await asyncpg.connect(self.db)
        try:
            n = await conn.fetchval("SELECT count(*) FROM documents")
            size = await conn.fetchval("SELECT pg_total_relation_size('documents')")
        finally:
            await conn.close()
        return int(n), int(size)

    async def enqueue(self, urls: list[str], batch: int) -> None:
        settings = load_settings(database_url=self.db, redis_url=self.rd, queue=QUEUE)
        async with open_queue(settings) as redis:
            await enqueue_urls(redis, urls, batch_size=batch)


def _delta(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> dict[str, tuple[int, int, int]]:
    out = {}
    for table, now in after.items():
        was = before.get(table, (0, 0, 0))
        out[table] = (now[0] - was[0], now[1] - was[1], now[2] - was[2])
    return out


def _env(db: str, rd: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
    env.update(
        DATABASE_URL=db,
        REDIS_URL=rd,
        HARVESTER_QUEUE=QUEUE,
        HARVESTER_ALLOWED_NETWORKS="127.0.0.0/8",
        HARVESTER_LOG_LEVEL="WARNING",
    )
    return env


def work(m: Measure, landed: int) -> Worked:
    """One burst worker over what is queued: Redis, Postgres and CPU while it ran."""
    redis_cpu = asyncio.run(m.reset_redis())
    before = asyncio.run(m.snapshot())
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "worker", "--burst"], env=_env(m.db, m.rd)
    )
    code, _, cpu = procs.wait(proc)
    seconds = time.perf_counter() - started
    assert code == 0, f"the worker exited with {code}"
    redis = asyncio.run(m.read_redis())
    redis.cpu -= redis_cpu
    after = asyncio.run(m.settled(before, landed))
    wal = after.lsn - before.lsn
    pg_cpu = after.cpu - before.cpu if after.cpu is not None and before.cpu is not None else None
    return Worked(redis, wal, _delta(before.rows, after.rows), cpu, seconds, pg_cpu)


def case(m: Measure, up: upstream_mod.Upstream, kb: int, batch: int, n: int) -> Case:
    asyncio.run(m.empty())
    tag = time.monotonic_ns()
    urls = [up.url(kb, i) + f"&r={tag}" for i in range(n)]
    redis_cpu = asyncio.run(m.reset_redis())
    asyncio.run(m.enqueue(urls, batch))
    enqueued = asyncio.run(m.read_redis())
    enqueued.cpu -= redis_cpu
    worked = work(m, n)
    landed, size = asyncio.run(m.count_and_size())
    assert landed == n, f"{landed} of {n} landed"
    return Case(kb, batch, n, enqueued, worked, size)


@contextmanager
def running_worker(m: Measure) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running worker, stopped (SIGTERM, then SIGKILL) whatever happens."""
    proc = subprocess.Popen([sys.executable, "-m", "worker", "worker"], env=_env(m.db, m.rd))
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _registered(m: Measure) -> None:
    r = aioredis.Redis.from_url(m.rd)
    try:
        deadline = time.monotonic() + 30
        while not await r.exists(f"{QUEUE}:workers"):
            assert time.monotonic() < deadline, "the idle worker never registered"
            await asyncio.sleep(0.1)
    finally:
        await r.aclose()


def idle(m: Measure, seconds: float) -> Redis:
    """What one idle worker sends Redis in ``seconds``."""
    asyncio.run(m.empty())
    with running_worker(m):
        asyncio.run(_registered(m))
        asyncio.run(m.reset_redis())
        time.sleep(seconds)  # a measurement window, not a wait for a condition
        return asyncio.run(m.read_redis())


def _per(value: float, n: int) -> str:
    return f"{value / n:,.2f}" if n else "-"


def report(c: Case, base: Worked) -> list[str]:
    """The lines for one case; ``base`` (an empty queue's burst worker) is taken off."""
    jobs = -(-c.urls // c.batch)
    r = c.work.redis.minus(base.redis)
    wal = c.work.wal - base.wal
    cpu = c.work.cpu - base.cpu
    top = sorted(r.commands.items(), key=lambda kv: -kv[1])
    lines = [
        f"{c.kb} KB bodies, batches of {c.batch}: {c.urls} URLs in {jobs} jobs, "
        f"{c.work.seconds:.1f} s (start-up included)",
        f"  enqueue  Redis commands/job {_per(c.enqueue.total, jobs)}, "
        f"bytes in/URL {_per(c.enqueue.bytes_in, c.urls)}, "
        f"memory/queued URL {_per(c.enqueue.memory, c.urls)} B",
        f"  worker   Redis commands/URL {_per(r.total, c.urls)}, /job {_per(r.total, jobs)}; "
        f"bytes in/URL {_per(r.bytes_in, c.urls)}, out/URL {_per(r.bytes_out, c.urls)}; "
        f"results kept: memory/job {_per(c.work.redis.memory, jobs)} B, "
        f"/URL {_per(c.work.redis.memory, c.urls)} B",
        "           per job: " + ", ".join(f"{k} {v / jobs:.1f}" for k, v in top),
        f"  Postgres WAL bytes/URL {_per(wal, c.urls)}; documents on disk/URL "
        f"{_per(c.documents_bytes, c.urls)} B",
    ]
    for table, (ins, upd, dele) in sorted(c.work.rows.items()):
        b = base.rows.get(table, (0, 0, 0))
        ins, upd, dele = ins - b[0], upd - b[1], dele - b[2]
        if ins or upd or dele:
            lines.append(
                f"           {table}: inserted/URL {_per(ins, c.urls)}, "
                f"updated/URL {_per(upd, c.urls)}, deleted/URL {_per(dele, c.urls)}"
            )
    lines.append(
        f"  CPU      worker {cpu / c.urls * 1e6:,.0f} µs/URL; Redis "
        f"{(c.work.redis.cpu - base.redis.cpu + c.enqueue.cpu) / c.urls * 1e6:,.1f} µs/URL "
        f"(enqueue included); Postgres {_pg_cpu(c.work, base, c.urls)}"
    )
    return lines


def _pg_cpu(w: Worked, base: Worked, urls: int) -> str:
    if w.postgres_cpu is None or base.postgres_cpu is None:
        return "not measured (the server is not on this machine)"
    return f"{(w.postgres_cpu - base.postgres_cpu) / urls * 1e6:,.0f} µs/URL (every process)"


def _idle_lines(r: Redis, seconds: float) -> list[str]:
    by = ", ".join(f"{k} {v / seconds:.1f}" for k, v in sorted(r.commands.items()))
    return [
        f"idle worker, {seconds:g} s: {r.total / seconds:.1f} Redis commands/s ({by}); "
        f"bytes in {r.bytes_in / seconds:,.0f}/s, out {r.bytes_out / seconds:,.0f}/s"
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.costs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--urls", type=int, default=5000, help="URLs per case (5000)")
    parser.add_argument("--sizes", default="1,16", help="body sizes in KiB (1,16)")
    parser.add_argument("--batches", default="100,1000", help="URLs per job (100,1000)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to watch an idle worker")
    database.add_argument(parser)
    parser.add_argument("--redis-url", default=None, help="a Redis database to use (flushed)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    batches = [int(x) for x in args.batches.split(",")]
    with tempfile.TemporaryDirectory(prefix="harvester-costs-") as tmp:
        root = Path(tmp)
        up = upstream_mod.start(root / "upstream", sizes)
        rd = None if args.redis_url else EmbeddedRedis(root / "valkey")
        try:
            with database.server(database.one_server(args.database_url), root / "postgres") as pg:
                rurl = args.redis_url or rd.start()  # type: ignore[union-attr]
                asyncio.run(migrate(pg.url))
                m = Measure(pg.url, rurl, asyncio.run(database.postmaster(pg.url)))
                lines = measure(m, up, sizes, batches, args)
        except database.BenchDatabaseError as exc:
            print(f"python -m bench.costs: {exc}", file=sys.stderr)
            return 2
        finally:
            up.stop()
            if rd is not None:
                rd.stop()
    print(f"upstream {up.kind}; {os.cpu_count()} CPUs; Postgres and Redis on the same machine")
    print("\n".join(lines))
    return 0


def measure(
    m: Measure,
    up: upstream_mod.Upstream,
    sizes: list[int],
    batches: list[int],
    args: argparse.Namespace,
) -> list[str]:
    asyncio.run(m.empty())
    base = work(m, 0)
    lines = [
        f"start-up and exit of a burst worker (taken off below): {base.redis.total} Redis "
        f"commands, {base.wal:,} WAL bytes, {base.cpu:.2f} s CPU"
    ]
    for kb in sizes:
        for batch in batches:
            c = case(m, up, kb, batch, args.urls)
            lines += report(c, base)
            print(f"done: {kb} KB, batches of {batch}", file=sys.stderr, flush=True)
    if args.idle > 0:
        lines += _idle_lines(idle(m, args.idle), args.idle)
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
