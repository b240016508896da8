"""A run's fetch metrics: counted in a `FetchTally` and added to the registry in bulk."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from worker.engine import counters
from worker.engine.counters import FETCH_SECONDS, FLUSH_EVERY, REGISTRY, FetchTally
from worker.engine.outcomes import Failed, Fetched, NotModified, Outcome, ResponseMeta

_SERIES = (
    ("harvester_fetches_total", {"outcome": "document", "status_class": "2xx"}),
    ("harvester_fetches_total", {"outcome": "not_modified", "status_class": "3xx"}),
    ("harvester_fetches_total", {"outcome": "http_status", "status_class": "5xx"}),
    ("harvester_fetches_total", {"outcome": "timeout", "status_class": "none"}),
    ("harvester_fetched_bytes_total", {}),
    ("harvester_fetch_retries_total", {}),
    ("harvester_fetch_seconds_sum", {}),
    ("harvester_fetch_seconds_count", {}),
)


def _latencies(registry: CollectorRegistry, name: str) -> dict[str, float]:
    return {
        s.labels["le"]: s.value
        for metric in registry.collect()
        if metric.name == name
        for s in metric.samples
        if s.name.endswith("_bucket")
    }


def _values() -> dict[str, float]:
    values = {
        f"{name}{sorted(labels.items())}": REGISTRY.get_sample_value(name, labels) or 0.0
        for name, labels in _SERIES
    }
    buckets = _latencies(REGISTRY, "harvester_fetch_seconds")
    return values | {f"le={le}": v for le, v in buckets.items()}


def _outcomes() -> list[Outcome]:
    meta = ResponseMeta('"v1"', None, None)
    return [
        Fetched("http://a/1", 200, b"x" * 10, 3, 1),
        Fetched("http://a/2", 201, b"y" * 5, 70, 3),  # two retries
        Fetched("http://a/3", 200, b"", 10, 1),  # exactly a bucket's bound: counted in it
        Fetched("http://a/4", 200, b"z", 99_000, 1),  # past the last bound: +Inf
        NotModified("http://a/5", 250, 1, meta),
        Failed("http://a/6", "http_status", "HTTP 503", 503, 2),
        Failed("http://a/7", "timeout", "timed out", None, 1),
    ]


def test_a_flush_moves_the_registry_as_observing_each_outcome_would() -> None:
    """Counters move by what was recorded, and the latency histogram's buckets, sum and count
    as `Histogram.observe` of each document's and 304's seconds moves them."""
    before = _values()
    tally = FetchTally()
    for outcome in _outcomes():
        tally.record(outcome)
    assert _values() == before  # nothing told yet
    tally.flush()
    after = _values()
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    reference = CollectorRegistry()
    fresh = Histogram("h", "h", buckets=counters._LATENCY_BUCKETS, registry=reference)
    for seconds in (0.003, 0.07, 0.01, 99.0, 0.25):
        fresh.observe(seconds)
    expected = {f"le={le}": v for le, v in _latencies(reference, "h").items() if v}
    assert {k: v for k, v in moved.items() if k.startswith("le=")} == expected
    assert moved["harvester_fetches_total[('outcome', 'document'), ('status_class', '2xx')]"] == 4
    assert (
        moved["harvester_fetches_total[('outcome', 'not_modified'), ('status_class', '3xx')]"] == 1
    )
    assert (
        moved["harvester_fetches_total[('outcome', 'http_status'), ('status_class', '5xx')]"] == 1
    )
    assert moved["harvester_fetches_total[('outcome', 'timeout'), ('status_class', 'none')]"] == 1
    assert moved["harvester_fetched_bytes_total[]"] == 16
    assert moved["harvester_fetch_retries_total[]"] == 3
    assert moved["harvester_fetch_seconds_count[]"] == 5
    assert round(moved["harvester_fetch_seconds_sum[]"], 6) == round(
        0.003 + 0.07 + 0.01 + 99 + 0.25, 6
    )
    tally.flush()  # nothing more to tell
    assert _values() == after


def test_a_tally_tells_the_registry_every_flush_every_outcomes() -> None:
    """A long run's metrics move while it runs, not only at its end."""
    before = REGISTRY.get_sample_value("harvester_fetched_bytes_total") or 0.0
    tally = FetchTally()
    for i in range(FLUSH_EVERY):
        tally.record(Fetched(f"http://a/{i}", 200, b"x", 1, 1))
    assert REGISTRY.get_sample_value("harvester_fetched_bytes_total") == before + FLUSH_EVERY


def test_the_histogram_has_the_buckets_a_tally_counts_into() -> None:
    """One value per bound and +Inf: what `FetchTally.flush` adds to, index by index."""
    assert len(FETCH_SECONDS._buckets) == len(counters._LATENCY_BUCKETS) + 1


def test_the_installed_prometheus_client_takes_observations_in_bulk() -> None:
    """The tally's fast path is the one in use: were prometheus_client's histogram values
    renamed, every observation would go through `observe` again (correct, but slower), and
    this says so."""
    assert counters._BULK
