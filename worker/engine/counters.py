"""Prometheus counters of a harvester process: what the engine and the jobs record.

The metrics live in one registry per process (`REGISTRY`); `worker.ops.metrics` serves it.
Recording is cheap on the busy path: label children are bound once and cached.
"""

from __future__ import annotations

from bisect import bisect_left
from functools import cache
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.engine.outcomes import Failed, Fetched, NotModified, Outcome

REGISTRY: Final = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

FETCHES: Final = Counter(
    "harvester_fetches",
    "URLs fetched, by outcome (document, not_modified, or a failure kind) and HTTP status class",
    ["outcome", "status_class"],
    registry=REGISTRY,
)
RETRIES: Final = Counter(
    "harvester_fetch_retries", "Attempts beyond the first, over all URLs", registry=REGISTRY
)
FETCHED_BYTES: Final = Counter(
    "harvester_fetched_bytes", "Body bytes fetched (after decompression)", registry=REGISTRY
)
FETCH_SECONDS: Final = Histogram(
    "harvester_fetch_seconds",
    "Time from a URL's first attempt to its outcome, retries included",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ROWS_WRITTEN: Final = Counter(
    "harvester_rows_written", "Rows landed in Postgres, by table", ["table"], registry=REGISTRY
)
WRITE_SECONDS: Final = Histogram(
    "harvester_write_seconds",
    "Time to land one chunk (retries included)",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOBS: Final = Counter(
    "harvester_jobs",
    "fetch_batch runs by result: complete, continued, deferred, overran, abandoned, rejected",
    ["result"],
    registry=REGISTRY,
)
EVENTS_LOST: Final = Counter(
    "harvester_events_lost",
    "Landed chunks the change stream was not told of (its buffer full, or Redis refused)",
    registry=REGISTRY,
)
WEBHOOKS: Final = Counter(
    "harvester_webhooks",
    "Webhook delivery attempts by result: delivered, retry, failed (given up)",
    ["result"],
    registry=REGISTRY,
)
QUEUE_DEPTH: Final = Gauge(
    "harvester_queue_depth",
    "Jobs in the arq queue (read at scrape time)",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",  # set by whichever process serves the scrape
)


# A run tells the registry what it fetched once this many outcomes (and at its end).
FLUSH_EVERY: Final = 100
# prometheus_client has no public way to add many observations at once: a tally adds to the
# values `observe` increments (tests/unit/test_counters.py holds them to it). Should a release
# of prometheus_client name them otherwise, each observation goes through `observe` again.
_BULK: Final = all(hasattr(FETCH_SECONDS, name) for name in ("_buckets", "_sum"))


@cache
def _fetch_child(outcome: str, status: int | None) -> Counter:
    """The label child for an outcome and HTTP status, bound once per pair."""
    return FETCHES.labels(outcome=outcome, status_class=_status_class(status))


def _status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


class FetchTally:
    """One run's fetch metrics, counted in plain numbers and added to the registry's every
    `FLUSH_EVERY` outcomes and by `flush` at the run's end: told one URL at a time, the
    registry's counters and histogram took about 2 µs a URL, a lock per increment (issue 17)."""

    def __init__(self) -> None:
        self._fetches: dict[tuple[str, int | None], int] = {}  # (outcome, status): URLs
        self._bytes = 0
        self._retries = 0
        # FETCH_SECONDS's observations: how many fell in each bucket (the last: +Inf), the sum.
        self._buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self._seconds = 0.0
        self._pending = 0

    def record(self, outcome: Outcome) -> None:
        """Count one URL's outcome."""
        if isinstance(outcome, Fetched):
            key: tuple[str, int | None] = ("document", outcome.status)
            self._bytes += len(outcome.body)
            self._observe(outcome.elapsed_ms / 1000)
        elif isinstance(outcome, NotModified):
            key = ("not_modified", 304)
            self._observe(outcome.elapsed_ms / 1000)
        else:
            assert isinstance(outcome, Failed)
            key = (outcome.kind, outcome.status)
        self._fetches[key] = self._fetches.get(key, 0) + 1
        if outcome.attempts > 1:
            self._retries += outcome.attempts - 1
        self._pending += 1
        if self._pending >= FLUSH_EVERY:
            self.flush()

    def _observe(self, seconds: float) -> None:
        if not _BULK:
            FETCH_SECONDS.observe(seconds)
            return
        # Histogram.observe's bucket: the first whose bound is at least the value.
        self._buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        self._seconds += seconds

    def flush(self) -> None:
        """Add what was counted since the last flush to the registry's metrics."""
        for (outcome, status), n in self._fetches.items():
            _fetch_child(outcome, status).inc(n)
        if self._bytes:
            FETCHED_BYTES.inc(self._bytes)
        if self._retries:
            RETRIES.inc(self._retries)
        if any(self._buckets):
            for value, n in zip(FETCH_SECONDS._buckets, self._buckets, strict=True):
                if n:
                    value.inc(n)
            FETCH_SECONDS._sum.inc(self._seconds)
        self._fetches.clear()
        self._bytes = self._retries = self._pending = 0
        self._buckets = [0] * len(self._buckets)
        self._seconds = 0.0


def record_write(documents: int, failures: int, seconds: float) -> None:
    """Count one landed chunk."""
    if documents:
        ROWS_WRITTEN.labels(table="documents").inc(documents)
    if failures:
        ROWS_WRITTEN.labels(table="fetch_failures").inc(failures)
    WRITE_SECONDS.observe(seconds)


def record_job(result: str) -> None:
    """Count one run of a fetch_batch job."""
    JOBS.labels(result=result).inc()
