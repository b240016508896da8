"""Validation of a `fetch_batch` payload: every way it can be wrong, said plainly."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from yarl import URL

from worker.engine.guard import host_problem
from worker.errors import BadJobError

MAX_SOURCE_LENGTH = 200
MAX_JOB_ID_LENGTH = 256
_FIELDS = ("urls", "source", "scheduled")
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


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated batch: URLs as enqueued, an optional source label, and whether it is a poll
    of registered sources (conditional requests, change detection)."""

    urls: tuple[str, ...]
    source: str | None
    scheduled: bool = False


def parse_batch(
    args: Sequence[object], kwargs: Mapping[str, object], *, max_urls: int, job_id: str
) -> Batch:
    """Validate a job's arguments, or raise `BadJobError` saying what was wrong."""
    problems = job_id_problems(job_id, intake=False)
    if args:
        problems.append(f"takes keyword arguments only, got {len(args)} positional")
    unknown = sorted(set(kwargs) - set(_FIELDS))
    if unknown:
        problems.append(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: urls, source, scheduled"
        )

    urls = kwargs.get("urls")
    if "urls" not in kwargs:
        problems.append("'urls' is required: a list of URL strings")
    elif not isinstance(urls, list):
        problems.append(f"'urls' must be a list of strings, got {type(urls).__name__}")
    elif not urls:
        problems.append("'urls' is empty")
    elif len(urls) > max_urls:
        problems.append(
            f"'urls' has {len(urls)} items, over the limit of {max_urls} (HARVESTER_MAX_BATCH_URLS)"
        )
    else:
        bad = [i for i, u in enumerate(urls) if not isinstance(u, str)]
        if bad:
            first = bad[0]
            problems.append(
                f"'urls' must contain only strings: {len(bad)} item(s) are not, the first at "
                f"index {first} is {type(urls[first]).__name__}"
            )
        else:
            # Postgres text cannot hold NUL, so such a URL could not even be recorded as failed.
            nul = [i for i, u in enumerate(urls) if "\x00" in u]
            if nul:
                problems.append(
                    f"'urls' item(s) at index {', '.join(map(str, nul[:5]))} contain a NUL "
                    "character, which cannot be stored"
                )

    source = kwargs.get("source")
    if source is not None and not isinstance(source, str):
        problems.append(f"'source' must be a string or null, got {type(source).__name__}")
    elif isinstance(source, str) and len(source) > MAX_SOURCE_LENGTH:
        problems.append(f"'source' is longer than {MAX_SOURCE_LENGTH} characters")
    elif isinstance(source, str) and has_control(source):
        problems.append(
            f"'source' contains a control character ({first_control(source)}: a newline, "
            "ESC, NUL...)"
        )

    scheduled = kwargs.get("scheduled", False)
    if not isinstance(scheduled, bool):
        problems.append(f"'scheduled' must be true or false, got {type(scheduled).__name__}")

    if problems:
        raise BadJobError("invalid fetch_batch payload: " + "; ".join(problems))
    assert isinstance(urls, list)
    return Batch(
        urls=tuple(urls),
        source=source if isinstance(source, str) else None,
        scheduled=scheduled is True,
    )
