"""Timing rules of scheduled sources: durations, declared freshness, next due time."""

from __future__ import annotations

import re
from email.utils import formatdate

import pytest

from worker.engine.schedule import format_duration, fresh_for, next_poll_delay, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("1d", 86_400),
        ("1h30m", 5400),
        ("1w", 604_800),
        (" 15 M ", 900),
        ("0.5h", 1800),
    ],
)
def test_parse_duration_reads_units(text: str, seconds: float) -> None:
    """Durations take s/m/h/d/w suffixes and combinations of them."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "15x", "m", "-5m", "15m junk", "1h-"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    """Anything that is not a positive duration is refused, naming the text."""
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "number"), [("15", "15"), (" 90 ", "90"), ("1h30", "30"), ("0.5", "0.5")]
)
def test_parse_duration_needs_a_unit(text: str, number: str) -> None:
    """A number without a unit is refused (seconds? minutes?), offering the units."""
    units = f"{number} needs a unit: {number}s, {number}m, {number}h or {number}d"
    with pytest.raises(ValueError, match=f"^{re.escape(units)}$"):
        parse_duration(text)


def test_format_duration_picks_the_largest_whole_unit() -> None:
    """900 s shows as 15m, 7200 s as 2h, 90 s as 90s."""
    assert [format_duration(s) for s in (900, 7200, 90, 86_400, 45)] == [
        "15m",
        "2h",
        "90s",
        "1d",
        "45s",
    ]


def test_fresh_for_reads_max_age_before_expires() -> None:
    """Cache-Control max-age wins over Expires, as RFC 9111 says."""
    expires = formatdate(1_000_000 + 50, usegmt=True)
    assert fresh_for("public, max-age=600", expires, now=1_000_000) == 600
    assert fresh_for('s-maxage=1, max-age="30"', None) == 30


def test_fresh_for_reads_expires_against_the_date_header() -> None:
    """Expires counts from the response's Date, so clock skew does not matter."""
    date = formatdate(5_000_000, usegmt=True)
    expires = formatdate(5_000_000 + 3600, usegmt=True)
    assert fresh_for(None, expires, date, now=0) == 3600


def test_fresh_for_no_cache_and_garbage() -> None:
    """no-store / no-cache mean 0; no header or an unreadable one means None; past is 0."""
    assert fresh_for("no-cache", None) == 0
    assert fresh_for(None, None) is None
    assert fresh_for(None, "not a date") is None
    assert fresh_for(None, formatdate(100, usegmt=True), now=200) == 0


def test_next_poll_delay_success_keeps_interval_and_honours_freshness() -> None:
    """A success is due after its interval, later if the server says fresh for longer, never
    earlier, and never past the cap."""
    kw = {"interval": 900.0, "max_delay": 86_400.0, "ok": True, "consecutive_failures": 0}
    assert next_poll_delay(**kw) == 900
    assert next_poll_delay(**kw, fresh=3600) == 3600
    assert next_poll_delay(**kw, fresh=60) == 900
    assert next_poll_delay(**kw, fresh=10**9) == 86_400


def test_next_poll_delay_backs_off_failures_up_to_the_cap() -> None:
    """Each consecutive failure doubles the delay, up to the cap; Retry-After pushes later."""
    delays = [
        next_poll_delay(interval=60, max_delay=3600, ok=False, consecutive_failures=n)
        for n in range(1, 8)
    ]
    assert delays == [120, 240, 480, 960, 1920, 3600, 3600]
    assert (
        next_poll_delay(
            interval=60, max_delay=3600, ok=False, consecutive_failures=1, retry_after=1000
        )
        == 1000
    )


def test_next_poll_delay_is_never_below_the_interval() -> None:
    """A cap smaller than the interval does not make a source poll more often than asked."""
    assert next_poll_delay(interval=7200, max_delay=3600, ok=True, consecutive_failures=0) == 7200
