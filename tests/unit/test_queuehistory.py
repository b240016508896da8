"""The dashboard's queue history: a ring of the API's samples, the last hour only."""

from __future__ import annotations

from worker.ops.queuehistory import QueueHistory
from worker.ops.status import Waiting


def test_the_queue_history_keeps_the_last_hour_only() -> None:
    """Samples past keep_s / sample_s push the oldest out; the lists stay parallel."""
    history = QueueHistory(sample_s=15, keep_s=60)
    for n in range(6):
        history.add(Waiting(n, n, None), at=float(n))
    assert history.as_dict() == {
        "at": [2.0, 3.0, 4.0, 5.0],
        "queued": [2, 3, 4, 5],
        "oldest_ready_age_s": [None] * 4,
    }
