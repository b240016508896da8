"""Timing rules for scheduled sources, as pure functions: durations, freshness, next due time.

Nothing here does I/O, so every rule is unit-tested on its own (tests/test_schedule.py).
"""

from __future__ import annotations

import re
import time
from email.utils import parsedate_to_datetime
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_MAX_AGE: Final = re.compile(r"(?:^|,)\s*(?:s-)?max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``30s``, ``15m``, ``2h``, ``1d``, ``1w`` or ``1h30m``.

    Every number needs its unit: a bare ``15`` could mean seconds or minutes, so it is refused
    ("15 needs a unit: 15s, 15m, 15h or 15d"). Raises ValueError naming the text when it is not
    a positive duration.
    """
    cleaned = text.strip().lower().replace(" ", "")
    pos = 0
    total = 0.0
    for match in _DURATION.finditer(cleaned):
        if match.start() != pos:
            break
        number, unit = match.groups()
        if not unit and match.end() < len(cleaned):
            break  # "15x": not a unit we know
        if not unit:
            raise ValueError(f"{number} needs a unit: {number}s, {number}m, {number}h or {number}d")
        total += float(number) * _UNITS[unit]
        pos = match.end()
    if not cleaned or pos != len(cleaned) or total <= 0:
        raise ValueError(f"{text!r} is not a duration such as 30s, 15m, 2h or 1d")
    return total


def format_duration(seconds: float) -> str:
    """The shortest whole-unit spelling of ``seconds`` (``900`` -> ``15m``)."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value.strip()).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def fresh_for(
    cache_control: str | None,
    expires: str | None,
    date: str | None = None,
    *,
    now: float | None = None,
) -> float | None:
    """Seconds a response says it stays fresh, from ``Cache-Control`` or ``Expires``, or None.

    ``no-store`` / ``no-cache`` mean 0; ``max-age`` wins over ``Expires`` (RFC 9111); an
    ``Expires`` is read against the response's ``Date`` when there is one, so clock skew between
    us and the server does not count.
    """
    if cache_control:
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return 0.0
        match = _MAX_AGE.search(cache_control)
        if match:
            return float(match.group(1))
    expires_at = _http_date(expires)
    if expires_at is None:
        return None
    base = _http_date(date)
    if base is None:
        base = time.time() if now is None else now
    return max(0.0, expires_at - base)


def next_poll_delay(
    *,
    interval: float,
    max_delay: float,
    ok: bool,
    consecutive_failures: int,
    fresh: float | None = None,
    retry_after: float | None = None,
) -> float:
    """Seconds until a source is due again after a poll.

    A success keeps the source's interval, pushed later (never earlier) by the freshness the
    server declared. A failure doubles the interval per consecutive failure. ``Retry-After``
    pushes either later. Everything is capped at ``max_delay``, but never below the interval.
    """
    if ok:
        delay = interval if fresh is None else max(interval, fresh)
    else:
        delay = interval * 2.0 ** min(consecutive_failures, 30)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(interval, min(delay, max_delay))
