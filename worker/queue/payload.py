"""The job contract: `FetchBatch`, the one definition of what a `fetch_batch` job accepts.

The worker validates every job with it (`parse_batch`), and every intake builds its jobs from it:
``harvester enqueue`` and `worker.queue.client`, the HTTP intake (whose OpenAPI document is
generated from it), scheduled-source polls and replays. Adding a field to a job is adding it
here (with its description, which the OpenAPI document shows), and to the README's contract
table, which a test keeps equal to this model's fields.

Refusals are said plainly ("'urls' is empty"), not in pydantic's words.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from yarl import URL

from worker.engine.credentials import NAME as PROFILE_NAME
from worker.engine.guard import host_problem
from worker.errors import BadJobError

JOB_NAME: Final = "fetch_batch"
MAX_SOURCE_LENGTH: Final = 200
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


class FetchBatch(BaseModel):
    """A batch of URLs to fetch: the keyword arguments of one ``fetch_batch`` job."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    urls: list[str] = Field(
        min_length=1,
        description="The URLs to fetch, stored exactly as given; duplicates get one outcome. "
        "At most HARVESTER_MAX_BATCH_URLS (10,000 by default).",
    )
    source: str | None = Field(
        default=None,
        max_length=MAX_SOURCE_LENGTH,
        description="A label stored in every row of the job (no control characters).",
    )
    scheduled: bool = Field(
        default=False,
        description="A poll of registered sources: URLs found in `sources` are fetched "
        "conditionally and land only when changed. The cron sets it; any service may.",
    )

    auth: str | None = Field(
        default=None,
        description="The name of a credential profile in the worker's HARVESTER_CREDENTIALS "
        "file: its secret goes with every request to the hosts the profile lists, never "
        "anywhere else. An unknown name refuses the job; nothing is fetched.",
    )

    @field_validator("urls")
    @classmethod
    def _storable_and_bounded(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        limit = (info.context or {}).get("max_urls")
        if limit is not None and len(urls) > limit:
            raise ValueError(
                f"'urls' has {len(urls)} items, over the limit of {limit} "
                "(HARVESTER_MAX_BATCH_URLS)"
            )
        # Postgres text cannot hold NUL, so such a URL could not even be recorded as failed.
        nul = [i for i, u in enumerate(urls) if "\x00" in u]
        if nul:
            raise ValueError(
                f"'urls' item(s) at index {', '.join(map(str, nul[:5]))} contain a NUL "
                "character, which cannot be stored"
            )
        return urls

    @field_validator("source")
    @classmethod
    def _printable(cls, source: str | None) -> str | None:
        char = first_control(source) if source is not None else None
        if char is not None:
            raise ValueError(
                f"'source' contains a control character ({char}: a newline, ESC, NUL...)"
            )
        return source

    @field_validator("auth")
    @classmethod
    def _known_profile(cls, auth: str | None, info: ValidationInfo) -> str | None:
        if auth is None:
            return None
        if not PROFILE_NAME.fullmatch(auth):
            raise ValueError(
                "'auth' must be a profile name: letters, digits, '_', '.', '-' (at most 64)"
            )
        # Known only where the credentials file is (the worker; an intake that has it).
        profiles = (info.context or {}).get("profiles")
        if profiles is not None and auth not in profiles:
            known = ", ".join(sorted(profiles)[:20]) or "none"
            raise ValueError(
                f"'auth': no credential profile named {auth!r} in HARVESTER_CREDENTIALS "
                f"(profiles: {known})"
            )
        return auth

    def as_kwargs(self) -> dict[str, Any]:
        """The job's keyword arguments as enqueued: defaults left out, so a plain batch is
        ``{"urls": [...]}`` and older workers read it too."""
        return self.model_dump(exclude_defaults=True)


class BatchRequest(FetchBatch):
    """What ``POST /batches`` takes: a `FetchBatch` and, optionally, its job id."""

    job_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_JOB_ID_LENGTH,
        description="The job id, the idempotency key: the same batch posted again under it "
        "adds nothing. No control characters; not starting with "
        + ", ".join(f"`{p}`" for p in RESERVED_JOB_ID_PREFIXES)
        + " (harvester's own jobs).",
    )


def parse_batch(
    args: Sequence[object],
    kwargs: Mapping[str, object],
    *,
    max_urls: int,
    job_id: str,
    profiles: Collection[str] | None = None,
) -> FetchBatch:
    """Validate a job's arguments, or raise `BadJobError` saying everything that was wrong.
    With ``profiles`` (the names of the credential profiles), an unknown ``auth`` is wrong."""
    problems = job_id_problems(job_id, intake=False)
    if args:
        problems.append(f"takes keyword arguments only, got {len(args)} positional")
    batch: FetchBatch | None = None
    try:
        context = {"max_urls": max_urls, "profiles": profiles}
        batch = FetchBatch.model_validate(kwargs, context=context)
    except ValidationError as exc:
        problems += describe(exc.errors(), kwargs)
    if problems or batch is None:
        raise BadJobError("invalid fetch_batch payload: " + "; ".join(problems))
    return batch


def make_batch(
    *, max_urls: int | None = None, profiles: Collection[str] | None = None, **fields: Any
) -> FetchBatch:
    """A `FetchBatch` from ``fields``, or `BadJobError` saying what is wrong with them."""
    try:
        context = {"max_urls": max_urls, "profiles": profiles}
        return FetchBatch.model_validate(fields, context=context)
    except ValidationError as exc:
        raise BadJobError("invalid batch: " + "; ".join(describe(exc.errors(), fields))) from None


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


# -- pydantic's errors, said plainly -----------------------------------------------------------

_TYPE_WORDS: Final = {
    "list_type": "must be a list of strings",
    "string_type": "must be a string or null",
    "bool_type": "must be true or false",
}


def describe(errors: Sequence[ErrorDetails], data: Mapping[str, object]) -> list[str]:
    """One plain sentence per problem pydantic found in ``data`` (a job's keyword arguments)."""
    problems: list[str] = []
    unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        allowed = ", ".join(FetchBatch.model_fields)
        problems.append(
            f"unknown field(s) {', '.join(map(repr, sorted(unknown)))}; allowed: {allowed}"
        )
    items = [e for e in errors if len(e["loc"]) == 2 and e["type"] == "string_type"]
    if items:
        first = items[0]
        problems.append(
            f"'{first['loc'][0]}' must contain only strings: {len(items)} item(s) are not, "
            f"the first at index {first['loc'][1]} is {type(first['input']).__name__}"
        )
    for e in errors:
        if e["type"] != "extra_forbidden" and e not in items:
            problems.append(_sentence(e, data))
    return problems


def _sentence(error: ErrorDetails, data: Mapping[str, object]) -> str:
    field = str(error["loc"][0]) if error["loc"] else "payload"
    kind = error["type"]
    if kind == "missing":
        return f"'{field}' is required" + (": a list of URL strings" if field == "urls" else "")
    if kind == "too_short":
        return f"'{field}' is empty"
    if kind == "string_too_long":
        return f"'{field}' is longer than {error.get('ctx', {}).get('max_length')} characters"
    if kind in _TYPE_WORDS:
        return f"'{field}' {_TYPE_WORDS[kind]}, got {type(data.get(field)).__name__}"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    return f"'{field}': {error['msg']}"
