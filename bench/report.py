"""The bench's measurements and how they are reported: a `Run` (one measurement, or the median
of its repetitions), the ratios between runs of one repetition, and the printed table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


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


@dataclass
class ServerCpu:
    """CPU seconds the servers spent during one run (None: not measured)."""

    postgres: float | None = None
    upstream: float | None = None

    def charge(self, run: Run) -> Run:
        run.postgres_cpu_seconds = self.postgres
        run.upstream_cpu_seconds = self.upstream
        return run


def paired_ratio(a: Run, b: Run) -> float:
    """Median of per-repetition ratios: runs of one repetition share the machine's load."""
    return statistics.median(x / y for x, y in zip(a.samples, b.samples, strict=True))


def paired_cpu_ratio(a: Run, b: Run) -> float:
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
            out[f"{r.size_kb}K {r.name} / api plain"] = round(paired_ratio(r, plain), 3)
        if not r.name.startswith("harvester"):
            continue
        for base in ("ceiling", "naive"):
            ref = next((x for x in runs if x.name == base and x.size_kb == r.size_kb), None)
            if ref is not None:
                out[f"{r.size_kb}K {r.name} b{r.batch} / {base}"] = round(paired_ratio(r, ref), 3)
            if ref is not None and base == "ceiling":
                key = f"{r.size_kb}K {r.name} b{r.batch} CPU/URL / ceiling CPU/URL"
                out[key] = round(paired_cpu_ratio(r, ref), 3)
    return out


def median_run(runs: list[Run]) -> Run:
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


def table(runs: list[Run]) -> str:
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
                shown.append(f"{paired_ratio(r, ceiling):.2f}x ceiling")
                shown.append(f"{paired_cpu_ratio(r, ceiling):.2f}x its CPU/URL")
            if r.name.startswith("harvester") and naive:
                shown.append(f"{paired_ratio(r, naive):.2f}x naive")
            plain = next((x for x in group if x.name == "api plain"), None)
            if r.name in ("api auth+pages", "api records") and plain:
                shown.append(f"{paired_ratio(r, plain):.3f}x api plain")
            if r.records:
                shown.append(f"{r.records_per_s:.0f} records/s")
            lines.append(
                f"{kb:>4}K {r.name:<14} {r.batch or '-':>6} {r.urls_per_s:>8.0f} "
                f"{r.samples!s:<22} {r.seconds:>6.2f} {r.wall_seconds:>6.2f} "
                f"{r.peak_rss_mib:>6.0f} MiB {r.run_us_per_url:>11.0f} "
                f"{us(r.postgres_us_per_url):>5} {us(r.upstream_us_per_url):>5}  "
                f"{', '.join(shown)}"
            )
    return "\n".join(lines)


def us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
