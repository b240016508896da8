"""Prometheus counters of a harvester process: what the engine and the jobs record.

The metrics live in one registry per process (`REGISTRY`); `worker.ops.metrics` serves it.
Recording is cheap on the busy path: label children are bound once and cached.
"""

from __future__ import annotations

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


@cache
def _fetch_child(outcome: str, status: int | None) -> Counter:
    """The label child for an outcome and HTTP status, bound once per pair (a URL's count is
    then a dict lookup and an ``inc``, with no label string built per URL)."""
    return FETCHES.labels(outcome=outcome, status_class=_status_class(status))


def _status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "none"


def record_fetch(outcome: Outcome) -> None:
    """Count one URL's outcome."""
    if isinstance(outcome, Fetched):
        _fetch_child("document", outcome.status).inc()
        FETCHED_BYTES.inc(len(outcome.body))
        FETCH_SECONDS.observe(outcome.elapsed_ms / 1000)
    elif isinstance(outcome, NotModified):
        _fetch_child("not_modified", 304).inc()
        FETCH_SECONDS.observe(outcome.elapsed_ms / 1000)
    else:
        assert isinstance(outcome, Failed)
        _fetch_child(outcome.kind, outcome.status).inc()
    if outcome.attempts > 1:
        RETRIES.inc(outcome.attempts - 1)


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
