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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as aioredis

from bench import api as api_mod
from bench import database, procs
from bench import upstream as upstream_mod
from worker.devtools.embedded import EmbeddedRedis
from worker.engine.migrate import migrate
from worker.queue.client import enqueue_batch, enqueue_urls, open_queue
from worker.queue.payload import FetchBatch, make_batch
from worker.settings import load_settings

QUEUE = "harvester:bench"
ROOT = Path(__file__).resolve().parent


@dataclass
class Run:
    name: str
    size_kb: int
    batch: int
    workers: int
    urls: int
    seconds: float  # first job start to last job finish: every row committed
    wall_seconds: float  # process start to exit, start-up included
    peak_rss_mib: float  # the largest worker process
    cpu_seconds: float = 0.0  # user + system CPU of the worker processes, start-up included
    samples: list[float] = field(default_factory=list)
    records: int = 0  # records upserted (the "api records" case)
    postgres_cpu_seconds: float | None = None  # the server's, every process (None: not seen)
    upstream_cpu_seconds: float | None = None  # the upstream server's that served the run
    startup_cpu_seconds: float = 0.0  # the same commands' over an empty queue (start-up, exit)
    cpu_samples: list[float] = field(default_factory=list)  # run_us_per_url per repetition

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds

    @property
    def urls_per_s(self) -> float:
        return self.urls / self.seconds

    @property
    def cpu_us_per_url(self) -> float:
        """The process under test's CPU per URL, start-up included."""
        return self.cpu_seconds / self.urls * 1e6

    @property
    def run_us_per_url(self) -> float:
        """The process under test's CPU per URL once running: start-up and exit (the same
        commands' over an empty queue) taken off, so that it depends neither on the number of
        URLs nor on how many processes start."""
        return (self.cpu_seconds - self.startup_cpu_seconds) / self.urls * 1e6

    @property
    def postgres_us_per_url(self) -> float | None:
        return _per_url(self.postgres_cpu_seconds, self.urls)

    @property
    def upstream_us_per_url(self) -> float | None:
        return _per_url(self.upstream_cpu_seconds, self.urls)


def _per_url(seconds: float | None, urls: int) -> float | None:
    return None if seconds is None else seconds / urls * 1e6


# Pages per walk in the "api auth+pages" case.
WALK_PAGES = 10
# The body size of the "api records" case (50 records a body): the 16 KB.
RECORDS_KB = 16


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        up: upstream_mod.Upstream,
        api: upstream_mod.Api,
        db: str,
        rd: str,
        root: Path,
        postmaster: int | None = None,
    ) -> None:
        self.args = args
        self.root = root
        self.up = up
        self.api_up = api
        self.db = db
        self.rd = rd
        self.postmaster = postmaster
        self.startup: dict[str, float] = {}  # CPU seconds of each command over an empty queue

    @contextmanager
    def _servers(self, upstream: int) -> Iterator[ServerCpu]:
        """CPU seconds the Postgres server and the ``upstream`` process tree spend in the block;
        read once the block's backends have left the server (see `bench.procs`)."""
        before = procs.snapshot()
        cpu = ServerCpu()
        yield cpu
        pm = self.postmaster
        after = procs.settled(pm, before) if pm is not None else procs.snapshot()
        cpu.postgres = procs.cpu_between(pm, before, after)
        cpu.upstream = procs.cpu_between(upstream, before, after)

    def env(self, **extra: object) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HARVESTER_")}
        env.update(
            DATABASE_URL=self.db,
            REDIS_URL=self.rd,
            HARVESTER_QUEUE=QUEUE,
            HARVESTER_ALLOWED_NETWORKS="127.0.0.0/8",
            HARVESTER_LOG_LEVEL="WARNING",
        )
        env.update({f"HARVESTER_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    def urls(self, kb: int, n: int, tag: str) -> list[str]:
        return [self.up.url(kb, i) + f"&r={tag}" for i in range(n)]

    async def _reset(self) -> None:
        conn = await asyncpg.connect(self.db)
        try:
            await conn.execute(
                "TRUNCATE documents, fetch_failures, records, record_seen, record_failures, "
                "latest_document_refs"
            )
            await conn.execute("DROP TABLE IF EXISTS naive_documents")
        finally:
            await conn.close()
        r = aioredis.Redis.from_url(self.rd)
        await r.flushdb()
        await r.aclose()

    async def _enqueue(self, urls: list[str], batch: int, function: str = "fetch_batch") -> None:
        settings = load_settings(database_url=self.db, redis_url=self.rd, queue=QUEUE)
        async with open_queue(settings) as redis:
            if function == "fetch_batch":
                await enqueue_urls(redis, urls, batch_size=batch)
            else:
                for i in range(0, len(urls), batch):
                    await redis.enqueue_job(function, urls=urls[i : i + batch])

    async def _enqueue_batches(self, batches: list[FetchBatch]) -> None:
        settings = load_settings(database_url=self.db, redis_url=self.rd, queue=QUEUE)
        async with open_queue(settings) as redis:
            for batch in batches:
                await enqueue_batch(redis, batch)

    async def _count(self, table: str) -> int:
        conn = await asyncpg.connect(self.db)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await conn.close()

    async def _job_window(self) -> float:
        """Seconds from the first job's start to the last job's finish, from arq's results."""
        r = aioredis.Redis.from_url(self.rd)
        try:
            keys = [k async for k in r.scan_iter("arq:result:*")]
            results = [orjson.loads(v) for v in await r.mget(keys)] if keys else []
        finally:
            await r.aclose()
        assert results, "no job results"
        assert all(x["s"] for x in results), "a job failed"
        return (max(x["ft"] for x in results) - min(x["st"] for x in results)) / 1000

    def ceiling(self, kb: int) -> Run:
        n = self.args.urls
        prefix = self.up.url(kb, 0).rsplit("=", 1)[0] + "="
        with self._servers(self.up.proc.pid) as servers:
            data, rss, cpu = self._ceiling(prefix, n, profile=f"ceiling-{kb}k")
        run = Run("ceiling", kb, 0, 1, n, data["seconds"], data["seconds"], rss, cpu)
        run.startup_cpu_seconds = self.startup.get("ceiling", 0.0)
        return servers.charge(run)

    def _ceiling(
        self, prefix: str, n: int, *, profile: str | None = None
    ) -> tuple[dict[str, float], float, float]:
        """The ceiling client over ``n`` URLs: what it printed, its peak RSS and CPU. Under
        py-spy with --profile and a ``profile`` label, so its flame graph compares with the
        workers'."""
        cmd = [sys.executable, "-m", "bench.ceiling", prefix, str(n), str(self.args.concurrency)]
        if self.args.profile and profile:
            cmd = profiled(cmd, Path(self.args.profile), profile, self.args.profile_format, 1)
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        out = proc.stdout.read()
        code, rss, cpu = procs.wait(proc)
        assert code == 0
        # py-spy, when it runs, writes its own lines to the same stdout.
        (printed,) = (line for line in out.splitlines() if line.startswith(b"{"))
        return orjson.loads(printed), rss, cpu

    def measure_startup(self, keys: list[str]) -> None:
        """CPU seconds of each command the plan's ``keys`` run, over an empty queue: start-up
        and exit, which `Run.run_us_per_url` leaves out. Once a repetition, so that it shares
        the repetition's load."""
        asyncio.run(self._reset())
        self.startup = {}
        if any(k.startswith("ceiling") for k in keys):
            self.startup["ceiling"] = self._ceiling(self.up.url(1, 0), 0)[2]
        if any(k.startswith("naive") for k in keys):
            self.startup["naive"] = self._idle(self._naive_command(), self.env())
        for processes in sorted({2 if " p2 " in k else 1 for k in keys if "naive" not in k}):
            command = self._worker_command("", processes, profile=False)()
            self.startup[f"worker p{processes}"] = self._idle(command, self._worker_env())

    def _idle(self, command: list[str], env: dict[str, str]) -> float:
        code, _, cpu = procs.wait(subprocess.Popen(command, env=env))
        assert code == 0, f"{command} exited with {code} on an empty queue"
        return cpu

    def harvester(
        self, kb: int, batch: int, workers: int = 1, processes: int = 1, **settings: object
    ) -> Run:
        """``workers`` separate ``harvester worker`` commands, each of ``processes``."""
        asyncio.run(self._reset())
        n = self.args.urls
        asyncio.run(self._enqueue(self.urls(kb, n, f"h{time.monotonic_ns()}"), batch))
        name = "harvester" if workers == 1 else f"harvester x{workers}"
        if processes > 1:
            name = f"harvester p{processes}"
        return self._work(name, kb, batch, n, workers, processes, **settings)

    def api(self, kb: int, pages: int = 0) -> Run:
        """The API upstream: plain GETs, or walks of ``pages`` pages (the same number of rows),
        every page signed by a bearer credential profile."""
        asyncio.run(self._reset())
        n = self.args.urls
        tag = time.monotonic_ns()
        if pages:
            walks = [self.api_up.url(kb, i, pages) + f"&auth=1&r={tag}" for i in range(n // pages)]
            size = 1000 // pages
            paginate = {"next": "link", "max_pages": pages}
            batches = [
                make_batch(urls=walks[i : i + size], paginate=paginate, auth="bench")
                for i in range(0, len(walks), size)
            ]
            asyncio.run(self._enqueue_batches(batches))
            return self._work(
                "api auth+pages",
                kb,
                size,
                len(walks) * pages,
                upstream=self.api_up.proc.pid,
                credentials=self._credentials(),
            )
        asyncio.run(self._enqueue([self.api_up.url(kb, i) + f"&r={tag}" for i in range(n)], 1000))
        return self._work("api plain", kb, 1000, n, upstream=self.api_up.proc.pid)

    def api_records(self, kb: int) -> Run:
        """The API upstream's record bodies (50 records each, keys distinct per URL), with
        ``records``: extraction and upsert on top of api plain's work."""
        asyncio.run(self._reset())
        n = self.args.urls
        tag = time.monotonic_ns()
        urls = [self.api_up.url(kb, i) + f"&records=1&r={tag}" for i in range(n)]
        records = {"path": "$.data[*]", "key": "$.id"}
        batches = [
            make_batch(urls=urls[i : i + 1000], source="bench", records=records)
            for i in range(0, n, 1000)
        ]
        asyncio.run(self._enqueue_batches(batches))
        run = self._work("api records", kb, 1000, n, upstream=self.api_up.proc.pid)
        landed = asyncio.run(self._count("records"))
        assert landed == n * api_mod.RECORDS_PER_BODY, f"{landed} records landed"
        assert asyncio.run(self._count("record_failures")) == 0
        run.records = landed
        return run

    def _credentials(self) -> Path:
        """A credentials file with the bench's bearer profile for the API upstream."""
        path = self.root / "credentials.toml"
        host = self.api_up.base.removeprefix("http://")
        path.write_text(
            f'[profiles.bench]\ntype = "bearer"\nhosts = ["{host}"]\n'
            'token_env = "BENCH_API_TOKEN"\n'
        )
        return path

    def _work(
        self,
        name: str,
        kb: int,
        batch: int,
        n: int,
        workers: int = 1,
        processes: int = 1,
        upstream: int | None = None,
        **settings: object,
    ) -> Run:
        """Run ``workers`` burst workers (of ``processes`` each) over what is queued; ``n`` rows
        must land. A parent's CPU and peak RSS, as wait4 reports them, include its children's.
        ``upstream``: the pid of the server the URLs point at (the static upstream's if None)."""
        env = self._worker_env(**settings)
        command = self._worker_command(f"{name}-{kb}k-b{batch}", processes)
        with self._servers(upstream or self.up.proc.pid) as servers:
            started = time.perf_counter()
            running = [subprocess.Popen(command(), env=env) for _ in range(workers)]
            waited = [procs.wait(p) for p in running]
            wall = time.perf_counter() - started
        assert all(code == 0 for code, _, _ in waited), waited
        landed = asyncio.run(self._count("documents"))
        assert landed == n, f"{landed} of {n} landed"
        seconds = asyncio.run(self._job_window())
        rss = max(rss for _, rss, _ in waited)
        cpu = sum(c for _, _, c in waited)
        run = Run(name, kb, batch, workers * processes, n, seconds, wall, rss, cpu)
        run.startup_cpu_seconds = workers * self.startup.get(f"worker p{processes}", 0.0)
        return servers.charge(run)

    def _worker_env(self, **settings: object) -> dict[str, str]:
        env = self.env(concurrency=self.args.concurrency, **{**self.args.settings, **settings})
        env["BENCH_API_TOKEN"] = api_mod.TOKEN
        return env

    def naive(self, kb: int, batch: int) -> Run:
        asyncio.run(self._reset())
        n = self.args.urls
        asyncio.run(
            self._enqueue(self.urls(kb, n, f"n{time.monotonic_ns()}"), batch, "naive_fetch")
        )
        with self._servers(self.up.proc.pid) as servers:
            started = time.perf_counter()
            proc = subprocess.Popen(self._naive_command(), env=self.env())
            code, rss, cpu = procs.wait(proc)
            wall = time.perf_counter() - started
        assert code == 0
        landed = asyncio.run(self._count("naive_documents"))
        assert landed == n, f"{landed} of {n} landed"
        seconds = asyncio.run(self._job_window())
        run = Run("naive", kb, batch, 1, n, seconds, wall, rss, cpu)
        run.startup_cpu_seconds = self.startup.get("naive", 0.0)
        return servers.charge(run)

    def _naive_command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("arq")), "bench.naive.WorkerSettings", "--burst"]

    def _worker_command(
        self, label: str, processes: int = 1, *, profile: bool = True
    ) -> Callable[[], list[str]]:
        """A burst worker (of ``processes``): each call its command line, under py-spy writing
        one profile per worker process tree into --profile's folder when it is given, under
        valgrind's callgrind when BENCH_CALLGRIND names a folder."""
        cmd = [sys.executable, "-m", "worker", "worker", "--burst"]
        if processes > 1:
            cmd += ["--processes", str(processes)]
        grind = os.environ.get("BENCH_CALLGRIND")
        if grind:  # instruction counts, steady where a shared machine's rates swing
            out = Path(grind) / f"{label.replace(' ', '_')}-%p.out"
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
        folder = self.args.profile
        if not folder or not profile:
            return lambda: cmd
        return lambda: profiled(cmd, Path(folder), label, self.args.profile_format, processes)


# py-spy's output formats and the extension of each.
PROFILE_FORMATS = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}


def profiled(cmd: list[str], folder: Path, label: str, fmt: str, processes: int) -> list[str]:
    """``cmd`` under `py-spy record`, writing ``<label>-<n>.<ext>`` into ``folder`` (n counts
    up, so repetitions and a run's several workers keep their own file); a supervisor's
    children are followed."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = label.replace(" ", "_")
    n = 1
    while any(folder.glob(f"{stem}-{n}.*")):
        n += 1
    out = folder / f"{stem}-{n}.{PROFILE_FORMATS[fmt]}"
    out.touch()  # claimed now: a second worker of the same run takes the next number
    spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--rate", "400"]
    if processes > 1:
        spy.append("--subprocesses")
    return [*spy, "--format", fmt, "-o", str(out), "--", *cmd]


@dataclass
class ServerCpu:
    """CPU seconds the servers spent during one run (None: not measured)."""

    postgres: float | None = None
    upstream: float | None = None

    def charge(self, run: Run) -> Run:
        run.postgres_cpu_seconds = self.postgres
        run.upstream_cpu_seconds = self.upstream
        return run


def _paired_ratio(a: Run, b: Run) -> float:
    """Median of per-repetition ratios: runs of one repetition share the machine's load."""
    return statistics.median(x / y for x, y in zip(a.samples, b.samples, strict=True))


def _paired_cpu_ratio(a: Run, b: Run) -> float:
    """Median of per-repetition ratios of CPU per URL (the process under test's): steadier
    than rates on a shared machine, where a neighbour slows a run more than it costs it CPU."""
    return statistics.median(x / y for x, y in zip(a.cpu_samples, b.cpu_samples, strict=True))


def ratios(runs: list[Run]) -> dict[str, float]:
    """harvester runs against the ceiling and the naive baseline of the same body size, and
    paged API walks against plain API GETs."""
    out: dict[str, float] = {}
    for r in runs:
        plain = next((x for x in runs if x.name == "api plain" and x.size_kb == r.size_kb), None)
        if r.name in ("api auth+pages", "api records") and plain is not None:
            out[f"{r.size_kb}K {r.name} / api plain"] = round(_paired_ratio(r, plain), 3)
        if not r.name.startswith("harvester"):
            continue
        for base in ("ceiling", "naive"):
            ref = next((x for x in runs if x.name == base and x.size_kb == r.size_kb), None)
            if ref is not None:
                out[f"{r.size_kb}K {r.name} b{r.batch} / {base}"] = round(_paired_ratio(r, ref), 3)
            if ref is not None and base == "ceiling":
                key = f"{r.size_kb}K {r.name} b{r.batch} CPU/URL / ceiling CPU/URL"
                out[key] = round(_paired_cpu_ratio(r, ref), 3)
    return out


def _median(runs: list[Run]) -> Run:
    by_rate = sorted(runs, key=lambda r: r.urls_per_s)
    mid = by_rate[len(by_rate) // 2]
    mid.samples = [round(r.urls_per_s) for r in runs]
    mid.peak_rss_mib = max(r.peak_rss_mib for r in runs)
    mid.cpu_seconds = statistics.median(r.cpu_seconds for r in runs)
    mid.startup_cpu_seconds = statistics.median(r.startup_cpu_seconds for r in runs)
    mid.cpu_samples = [round(r.run_us_per_url, 1) for r in runs]
    mid.postgres_cpu_seconds = _median_of([r.postgres_cpu_seconds for r in runs])
    mid.upstream_cpu_seconds = _median_of([r.upstream_cpu_seconds for r in runs])
    return mid


def _median_of(values: list[float | None]) -> float | None:
    """The median of the measured values; None when none was."""
    measured = [v for v in values if v is not None]
    return statistics.median(measured) if measured else None


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


def _table(runs: list[Run]) -> str:
    lines = [
        "ratios are medians of per-repetition ratios; CPU/URL in µs (user + system): run = the "
        "process under test (the worker's processes, or the ceiling's client) less its start-up "
        "and exit, pg = the Postgres server, up = the upstream server, every process of each",
        f"{'size':>5} {'what':<14} {'batch':>6} {'URLs/s':>8} {'samples':<22} {'s':>6} "
        f"{'wall s':>6} {'peak RSS':>9} {'CPU/URL run':>11} {'pg':>5} {'up':>5}  ratios",
    ]
    for kb in sorted({r.size_kb for r in runs}):
        group = [r for r in runs if r.size_kb == kb]
        ceiling = next((r for r in group if r.name == "ceiling"), None)
        naive = next((r for r in group if r.name == "naive"), None)
        for r in group:
            shown = []
            if r.name.startswith("harvester") and ceiling:
                shown.append(f"{_paired_ratio(r, ceiling):.2f}x ceiling")
                shown.append(f"{_paired_cpu_ratio(r, ceiling):.2f}x its CPU/URL")
            if r.name.startswith("harvester") and naive:
                shown.append(f"{_paired_ratio(r, naive):.2f}x naive")
            plain = next((x for x in group if x.name == "api plain"), None)
            if r.name in ("api auth+pages", "api records") and plain:
                shown.append(f"{_paired_ratio(r, plain):.3f}x api plain")
            if r.records:
                shown.append(f"{r.records_per_s:.0f} records/s")
            lines.append(
                f"{kb:>4}K {r.name:<14} {r.batch or '-':>6} {r.urls_per_s:>8.0f} "
                f"{r.samples!s:<22} {r.seconds:>6.2f} {r.wall_seconds:>6.2f} "
                f"{r.peak_rss_mib:>6.0f} MiB {r.run_us_per_url:>11.0f} "
                f"{_us(r.postgres_us_per_url):>5} {_us(r.upstream_us_per_url):>5}  "
                f"{', '.join(shown)}"
            )
    return "\n".join(lines)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


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
        print(_table(runs))
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
                    f"(pg {_us(run.postgres_us_per_url)}, up {_us(run.upstream_us_per_url)})",
                    flush=True,
                )
    return [[_median(v) for v in server.values()] for server in samples]


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
