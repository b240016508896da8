"""Which jobs `harvester status` lists as recent: pure logic, no services."""

from __future__ import annotations

from typing import Any

import pytest

from worker.ops.status import RECENT_JOBS, newest
from worker.ops.trends import distinct


def test_refused_jobs_and_jobs_with_rows_are_listed_newest_first() -> None:
    """Jobs the worker refused and jobs that landed rows make one list, by time."""
    landed = [("b", 30.0), ("a", 10.0)]
    refused = [("c", 20.0)]
    assert newest(landed, refused) == ["b", "c", "a"]


def test_the_list_is_cut_at_recent_jobs_and_names_a_job_once() -> None:
    """At most `RECENT_JOBS` ids, a job refused and then run again listed once."""
    landed = [(f"j{n}", float(n)) for n in range(RECENT_JOBS + 5)]
    refused = [("j3", 1_000.0)]  # a job id reused after a refusal: listed once, at its newest
    listed = newest(landed, refused)
    assert len(listed) == RECENT_JOBS
    assert listed[0] == "j3"
    assert listed.count("j3") == 1


def test_a_jobs_total_counts_each_outcome_once() -> None:
    """A URL given twice, or a request given twice with its body's keys in another order, gets
    one outcome: the progress bar's total counts it once. Headers are not identity."""
    assert distinct({"urls": ["http://a/1", "http://a/2", "http://a/1"]}) == 2
    requests = [
        {"url": "http://a/s", "method": "POST", "json": {"q": 1, "p": 2}},
        {"url": "http://a/s", "method": "POST", "json": {"p": 2, "q": 1}, "headers": {"X": "1"}},
        {"url": "http://a/s", "method": "POST", "json": {"q": 2}},
        {"url": "http://a/s"},
    ]
    assert distinct({"requests": requests}) == 3


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests": [{"url": "http://a/s"}, {"url": "http://a/s", "method": "GET"}]},
        {
            "method": "POST",
            "json": {"a": 1},
            "requests": [
                {"url": "http://a/s"},
                {"url": "http://a/s", "method": "POST"},
                {"url": "http://a/s", "json": {"a": 1}},
            ],
        },
    ],
)
def test_a_jobs_total_reads_requests_with_the_batchs_defaults(kwargs: dict[str, Any]) -> None:
    """A request that leaves its method or body to the batch is the same request as one that
    spells them out: the worker lands one outcome, and the total counts one."""
    assert distinct(kwargs) == 1


def test_a_job_the_worker_would_refuse_has_no_total() -> None:
    """Arguments that are no batch give no total rather than a guess."""
    assert distinct({"urls": "http://a/1"}) is None


def test_a_jobs_total_is_counted_once_per_enqueue(monkeypatch: pytest.MonkeyPatch) -> None:
    """`JobTotals` validates a stored job's payload once, not at every poll of the dashboard;
    the same id enqueued again is counted anew, and a job gone from Redis has no total."""
    from arq.jobs import serialize_job

    from worker.ops import trends
    from worker.queue.serialization import serialize

    counted: list[int] = []
    real = trends.distinct

    def counting(kwargs: dict[str, Any]) -> int | None:
        counted.append(1)
        return real(kwargs)

    monkeypatch.setattr(trends, "distinct", counting)

    def stored(enqueued_ms: int) -> bytes:
        urls = ["http://a.example/1", "http://a.example/2"]
        return serialize_job(
            "fetch_batch", (), {"urls": urls}, 1, enqueued_ms, serializer=serialize
        )

    totals = trends.JobTotals()
    assert [totals.of("j", stored(1_000)) for _ in range(3)] == [2, 2, 2]
    assert len(counted) == 1
    assert totals.of("j", stored(2_000)) == 2
    assert len(counted) == 2
    assert totals.of("j", None) is None
