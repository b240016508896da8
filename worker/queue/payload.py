"""The job contract: `FetchBatch`, the one definition of what a `fetch_batch` job accepts.

The worker validates every job with it (`parse_batch`), and every intake builds its jobs from it:
``harvester enqueue`` and `worker.queue.client`, the HTTP intake (whose OpenAPI document is
generated from it), scheduled-source polls and replays. Adding a field to a job is adding it
here (with its description, which the OpenAPI document shows), and to the README's contract
table, which a test keeps equal to this model's fields.

A batch is either ``urls`` (plain GETs, or all with the batch's ``method``, ``json`` and
``headers``) or ``requests``, each of which may override those three; `FetchBatch.requests_of`
turns either into the engine's `Request` values. Its parts (a request, pagination, records) are
in `shapes`; refusals are said plainly ("'urls' is empty"), not in pydantic's words (`refusals`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.engine.credentials import NAME as PROFILE_NAME
from worker.engine.requests import BODY_METHODS, NO_HEADERS, Body, Request, merged_headers
from worker.errors import BadJobError
from worker.queue.checks import (
    MAX_JOB_ID_LENGTH,
    RESERVED_JOB_ID_PREFIXES,
    first_control,
    job_id_problems,
    url_problem,
)
from worker.queue.refusals import describe
from worker.queue.shapes import (
    HEADERS_DOC,
    JSON_DOC,
    METHOD_DOC,
    Method,
    Paginate,
    Records,
    RequestSpec,
    check_headers,
    header_schema,
)

JOB_NAME: Final = "fetch_batch"
MAX_SOURCE_LENGTH: Final = 200


_BATCH_SCHEMA: Final[Any] = {
    "oneOf": [{"required": ["urls"]}, {"required": ["requests"]}],
    # A body only with a method that sends one.
    "if": {"required": ["json"], "properties": {"json": {"not": {"type": "null"}}}},
    "then": {"required": ["method"], "properties": {"method": {"enum": sorted(BODY_METHODS)}}},
    # Records are keyed by (source, key): a records object needs a source string.
    "allOf": [
        {
            "if": {"required": ["records"], "properties": {"records": {"type": "object"}}},
            "then": {"required": ["source"], "properties": {"source": {"type": "string"}}},
        }
    ],
}


class FetchBatch(BaseModel):
    """A batch of URLs or requests to fetch: the keyword arguments of one ``fetch_batch`` job."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        json_schema_extra=_BATCH_SCHEMA,
    )

    urls: list[str] | None = Field(
        default=None,
        min_length=1,
        description="The URLs to fetch, stored exactly as given; duplicates get one outcome. "
        "At most HARVESTER_MAX_BATCH_URLS (10,000 by default). Exactly one of urls and "
        "requests.",
    )
    requests: list[RequestSpec] | None = Field(
        default=None,
        min_length=1,
        description="Instead of urls, when requests differ: {url, method, json, headers} each; "
        "equal requests (URL, method, body) get one outcome. Same limit as urls.",
    )
    method: Method = Field(default="GET", description=METHOD_DOC)
    json_body: JsonValue = Field(default=None, alias="json", description=JSON_DOC)
    headers: dict[str, str] = Field(
        default_factory=dict, description=HEADERS_DOC, json_schema_extra=header_schema()
    )
    source: str | None = Field(
        default=None,
        max_length=MAX_SOURCE_LENGTH,
        description="A label stored in every row of the job (no control characters).",
    )
    scheduled: bool = Field(
        default=False,
        description="A poll of registered sources: requests whose URL is in `sources` land only "
        "when changed (GETs are fetched conditionally) and carry the source's cursor. The cron "
        "sets it; any service may.",
    )
    paginate: Paginate | None = Field(
        default=None,
        description="Walk each request's pages: each page lands as a row of its own, numbered, "
        'with its URL. See docs/jobs.md, "Paginated walks".',
    )
    records: Records | None = Field(
        default=None,
        description="Extract records from each document (each page too): every element at "
        "`path` is upserted into `records` by (`source`, `key`). Needs `source`. See "
        'docs/data-model.md, "Records".',
    )
    # The engine's requests: built by the validator for `requests` (each must be judged), on
    # first use for `urls` (one body for all, judged once), so intakes never build them.
    _requests: list[Request] | None = PrivateAttr(default=None)
    _body: Body | None = PrivateAttr(default=None)

    @field_validator("urls", "requests")
    @classmethod
    def _bounded(cls, items: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        limit = (info.context or {}).get("max_urls")
        if items is not None and limit is not None and len(items) > limit:
            raise ValueError(
                f"'{info.field_name}' has {len(items)} items, over the limit of {limit} "
                "(HARVESTER_MAX_BATCH_URLS)"
            )
        return items

    auth: str | None = Field(
        default=None,
        description="The name of a credential profile in the worker's HARVESTER_CREDENTIALS "
        "file: its secret goes with every request to the hosts the profile lists, never "
        "anywhere else. An unknown name refuses the job; nothing is fetched.",
    )
    notify_url: str | None = Field(
        default=None,
        max_length=2048,
        description="An http(s) URL POSTed a signed JSON summary once the job has finished "
        "(`complete` or `abandoned`): see docs/results.md. Refused unless the worker and the "
        "intake have HARVESTER_WEBHOOK_SECRET. Judged by the SSRF guard at every attempt; "
        "redirects are not followed.",
    )

    @field_validator("urls")
    @classmethod
    def _storable(cls, urls: list[str] | None) -> list[str] | None:
        nul = [i for i, u in enumerate(urls or ()) if "\x00" in u]
        if nul:
            raise ValueError(
                f"'urls' item(s) at index {', '.join(map(str, nul[:5]))} contain a NUL "
                "character, which cannot be stored"
            )
        return urls

    @field_validator("headers")
    @classmethod
    def _headers_ok(cls, headers: dict[str, str]) -> dict[str, str]:
        return check_headers(headers, "'headers': ") or {}

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

    @field_validator("notify_url")
    @classmethod
    def _notify_ok(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is None:
            return None
        problem = url_problem(url)
        if problem is not None:
            raise ValueError(f"'notify_url' {problem}")
        # Known only where the settings are read (the worker, an intake): None elsewhere.
        if (info.context or {}).get("webhooks") is False:
            raise ValueError(
                "'notify_url' needs HARVESTER_WEBHOOK_SECRET, which is not set: webhooks are "
                "always signed"
            )
        return url

    @model_validator(mode="after")
    def _requests_made(self) -> FetchBatch:
        if self.urls is None and self.requests is None:
            raise ValueError(
                "'urls' is required: a list of URL strings (or 'requests', a list of "
                "{url, method, json, headers} objects)"
            )
        if self.urls is not None and self.requests is not None:
            raise ValueError("give 'urls' or 'requests', not both")
        if self.records is not None and self.source is None:
            raise ValueError("'records' needs a 'source': records are keyed by (source, key)")
        self._body = _body("'json'", self.method, self.json_body)
        if self.requests is not None:
            self._requests = self._build(self.requests)
        return self

    def _build(self, specs: list[RequestSpec]) -> list[Request]:
        batch_body = self._body
        base = self.headers or NO_HEADERS
        requests = []
        for i, spec in enumerate(specs):
            method = spec.method or self.method
            if spec.json_body is not None:
                body = _body(f"'requests[{i}].json'", method, spec.json_body)
            elif batch_body is not None and method not in BODY_METHODS:
                raise ValueError(
                    f"'requests[{i}]' is a {method} request, which has no body, but the batch "
                    "has 'json': give the body per request instead"
                )
            else:
                body = batch_body
            headers = merged_headers(base, spec.headers or NO_HEADERS)
            requests.append(Request(spec.url, method, body, headers))
        return requests

    def requests_of(self) -> list[Request]:
        """The batch as the engine's requests, in order (duplicates kept)."""
        if self._requests is None:
            method, body, base = self.method, self._body, self.headers or NO_HEADERS
            self._requests = [Request(u, method, body, base) for u in self.urls or ()]
        return self._requests

    @property
    def size(self) -> int:
        """How many requests (URLs) the batch holds, duplicates counted."""
        return len(self.urls if self.urls is not None else self.requests or ())

    def as_kwargs(self) -> dict[str, Any]:
        """The job's keyword arguments as enqueued: defaults left out, so a plain batch is
        ``{"urls": [...]}`` and older workers read it too."""
        return self.model_dump(exclude_defaults=True, by_alias=True)


def _body(field: str, method: str, value: JsonValue) -> Body | None:
    """The body of ``field`` for a ``method`` request, or `ValueError` saying why not."""
    if value is None:
        return None
    if method not in BODY_METHODS:
        raise ValueError(
            f"{field} is a request body, which only POST, PUT and PATCH send; "
            f"this request's method is {method}"
        )
    try:
        return Body.of(value)
    except ValueError as exc:
        raise ValueError(f"{field} {exc}") from None


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
    max_pages: int | None = None,
    webhooks: bool | None = None,
) -> FetchBatch:
    """Validate a job's arguments, or raise `BadJobError` saying everything that was wrong.
    ``max_urls`` and ``max_pages`` are the settings' limits (HARVESTER_MAX_BATCH_URLS,
    HARVESTER_MAX_PAGES); with ``profiles`` (the names of the credential profiles), an unknown
    ``auth`` is wrong; with ``webhooks`` False (no HARVESTER_WEBHOOK_SECRET), a ``notify_url``
    is."""
    problems = job_id_problems(job_id, intake=False)
    if args:
        problems.append(f"takes keyword arguments only, got {len(args)} positional")
    batch: FetchBatch | None = None
    try:
        context = {
            "max_urls": max_urls,
            "profiles": profiles,
            "max_pages": max_pages,
            "webhooks": webhooks,
        }
        batch = FetchBatch.model_validate(kwargs, context=context)
    except ValidationError as exc:
        problems += describe(exc.errors(), kwargs, FetchBatch)
    if problems or batch is None:
        raise BadJobError("invalid fetch_batch payload: " + "; ".join(problems))
    return batch


def make_batch(
    *,
    max_urls: int | None = None,
    profiles: Collection[str] | None = None,
    max_pages: int | None = None,
    webhooks: bool | None = None,
    **fields: Any,
) -> FetchBatch:
    """A `FetchBatch` from ``fields``, or `BadJobError` saying what is wrong with them."""
    try:
        context = {
            "max_urls": max_urls,
            "profiles": profiles,
            "max_pages": max_pages,
            "webhooks": webhooks,
        }
        return FetchBatch.model_validate(fields, context=context)
    except ValidationError as exc:
        raise BadJobError(
            "invalid batch: " + "; ".join(describe(exc.errors(), fields, FetchBatch))
        ) from None
