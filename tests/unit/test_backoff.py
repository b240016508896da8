"""The one backoff policy."""

from __future__ import annotations

import random

import pytest

from worker.backoff import Backoff
from worker.settings import load_settings


def test_full_jitter_is_exponential_capped_and_spread() -> None:
    """Waits lie in [0, min(cap, base * 2**(n-1))] and spread over that range."""
    rng = random.Random(1)
    policy = Backoff(0.5, 5.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 5.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8
        assert min(delays) < ceiling * 0.2


def test_equal_jitter_never_waits_less_than_half() -> None:
    """Equal jitter keeps every wait in [ceiling / 2, ceiling]: a deferral is never near zero."""
    rng = random.Random(2)
    policy = Backoff(2.0, 300.0, "equal")
    for attempt in (1, 3, 12):
        ceiling = policy.ceiling(attempt)
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert policy.ceiling(12) == 300.0


def test_a_zero_base_switches_waits_off_and_huge_attempts_do_not_overflow() -> None:
    """Tests turn backoff off with a zero base; attempt counts far past the cap stay finite."""
    assert Backoff(0.0, 5.0).delay(4) == 0.0
    assert Backoff(1.0, 5.0).ceiling(10_000) == 5.0
    with pytest.raises(ValueError, match="negative"):
        Backoff(-1.0, 5.0)


def test_settings_build_the_policies_from_their_variables() -> None:
    """URL retries and job deferrals take their base and cap from the settings that name them."""
    s = load_settings(retry_base_delay=0.25, retry_max_delay=4, job_retry_delay=3)
    assert s.fetch_backoff == Backoff(0.25, 4.0, "full")
    assert s.job_backoff == Backoff(3.0, s.job_retry_max_delay, "equal")
