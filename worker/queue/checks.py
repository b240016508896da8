"""Checks on a job's strings that every intake and the worker share: job ids (`job_id_problems`),
URLs (`url_problem`) and control characters (`first_control`), said in plain words."""

from __future__ import annotations

import unicodedata
from typing import Final

from yarl import URL

from worker.engine.guard import host_problem

MAX_JOB_ID_LENGTH: Final = 256
# Job ids harvester gives its own jobs: cron ticks, source polls and replays. Intakes refuse
# them, so no caller can take (and so silence) one of harvester's own jobs.
RESERVED_JOB_ID_PREFIXES: Final = ("cron:", "poll-", "replay-")


def first_control(text: str) -> str | None:
    """The first control, format or other non-printing character of ``text`` (Unicode category
    C: newlines, ESC, NUL, bidi overrides, zero-width spaces...) as ``U+XXXX``, or None."""
    if text.isprintable():
        return None  # checked in C; only a space-free printable run gets here fast
    for char in text:
        if unicodedata.category(char)[0] == "C":
            return f"U+{ord(char):04X}"
    return None


def has_control(text: str) -> bool:
    """True if ``text`` holds a character `first_control` names."""
    return first_control(text) is not None


def job_id_problems(job_id: str, *, intake: bool = True) -> list[str]:
    """What is wrong with a job id. An intake (API, CLI, client) also refuses reserved ids;
    the worker runs harvester's own jobs, so it does not."""
    problems = []
    if not job_id.strip():
        problems.append("job id is empty")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        problems.append(f"job id is longer than {MAX_JOB_ID_LENGTH} characters")
    char = first_control(job_id)
    if char is not None:
        problems.append(f"job id contains a control or format character ({char})")
    if intake and job_id.startswith(RESERVED_JOB_ID_PREFIXES):
        problems.append(
            f"job ids starting with {', '.join(map(repr, RESERVED_JOB_ID_PREFIXES))} are "
            "reserved for harvester's own jobs"
        )
    return problems


def url_problem(url: str) -> str | None:
    """What makes ``url`` unfetchable as written (None if it is an absolute http(s) URL with a
    valid host). Whether its address is allowed is the SSRF guard's call, at fetch time."""
    if has_control(url) or url != url.strip():
        return "contains spaces or control characters"
    try:
        parsed = URL(url)
        scheme, host = parsed.scheme, parsed.raw_host
    except (ValueError, TypeError) as exc:
        return f"cannot be parsed ({exc})"
    if scheme not in ("http", "https"):
        return f"scheme {scheme or '(none)'!r} is not http or https"
    if not host:
        return "has no host"
    return host_problem(host)
