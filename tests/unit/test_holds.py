"""When a worker may take jobs over: not for one heartbeat life after it was cut off from Redis
long enough for live workers' heartbeats to have expired too (the decision, no services)."""

from __future__ import annotations

from worker.queue.holds import takeover_from

INTERVAL = 5.0  # HARVESTER_HEALTH_CHECK_INTERVAL's default; a heartbeat lives 10 s


def test_a_worker_beating_on_time_may_take_over_at_once() -> None:
    """Beats an interval apart (plus a poll's lateness), or a first beat: no pause."""
    assert takeover_from(None, 100.0, INTERVAL, 0.0) == 0.0
    assert takeover_from(100.0, 106.0, INTERVAL, 0.0) == 0.0


def test_a_worker_cut_off_longer_than_its_beats_allow_waits_one_heartbeat_life() -> None:
    """After a 15 s gap (a Redis outage: the other workers' heartbeats may have expired and they
    have not beaten again yet), takeovers wait 10 s from the beat that ended the gap."""
    since = takeover_from(100.0, 115.0, INTERVAL, 0.0)
    assert since == 125.0
    # The next beats on time keep that pause, never shorten it.
    assert takeover_from(115.0, 120.0, INTERVAL, since) == 125.0
    assert takeover_from(120.0, 125.0, INTERVAL, since) == 125.0
