"""How the bench runs each case: `Bench` starts the ceiling's client, harvester's workers, the
naive baseline and the API cases against one Postgres server, and measures each run (rate, CPU
of the process under test and of the servers, peak memory); `profiled` puts a worker under
py-spy."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import orjson
import redis.asyncio as aioredis

from bench import api as api_mod
from bench import procs
from bench import upstream as upstream_mod
from bench.report import Run, ServerCpu
from worker.queue.client import enqueue_batch, enqueue_urls, open_queue
from worker.queue.payload import FetchBatch, make_batch
from worker.settings import load_settings

QUEUE = "harvester:bench"
ROOT = Path(__file__).resolve().parent

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
