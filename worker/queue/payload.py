"""The job contract: `FetchBatch`, the one definition of what a `fetch_batch` job accepts.

The worker validates every job with it (`parse_batch`), and every intake builds its jobs from it:
``harvester enqueue`` and `worker.queue.client`, the HTTP intake (whose OpenAPI document is
generated from it), scheduled-source polls and replays. Adding a field to a job is adding it
here (with its description, which the OpenAPI document shows), and to the README's contract
table, which a test keeps equal to this model's fields.

A batch is either ``urls`` (plain GETs, or all with the batch's ``method``, ``json`` and
``headers``) or ``requests``, each of which may override those three; `FetchBatch.requests_of`
turns either into the engine's `Request` values. Refusals are said plainly ("'urls' is empty"),
not in pydantic's words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, Literal, get_args

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
from pydantic_core import ErrorDetails
from yarl import URL

from worker.engine.credentials import NAME as PROFILE_NAME
from worker.engine.guard import host_problem
from worker.engine.pagination import DEFAULT_MAX_PAGES, PATH_PATTERN, PageSpec, parse_path
from worker.engine.records import RecordSpec, compile_path
from worker.engine.requests import (
    BODY_METHODS,
    HEADER_NAME,
    MAX_HEADER_NAME,
    MAX_HEADERS,
    NO_HEADERS,
    REFUSED_HEADERS,
    Body,
    Request,
    header_problems,
    merged_headers,
)
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


Method = Literal["GET", "POST", "PUT", "PATCH"]
_METHODS: Final = get_args(Method)

_METHOD_DOC: Final = "The HTTP method: GET (the default), POST, PUT or PATCH."
_JSON_DOC: Final = (
    "A JSON request body, sent as application/json (POST, PUT and PATCH only; null: no body). "
    "Its SHA-256 is part of the outcome's identity."
)
_HEADERS_DOC: Final = (
    "Extra request headers, {name: value}. Never secrets: a job is stored in Redis, so "
    "Authorization, Proxy-Authorization and Cookie are refused (use a credential profile), as "
    "are hop-by-hop headers, Host and Content-Length. At most 32, 8 KB in all."
)


def _header_schema() -> dict[str, Any]:
    # Case-insensitive without a regex flag JSON Schema does not have: [Hh][Oo][Ss][Tt].
    refused = "|".join(
        "".join(f"[{c.upper()}{c}]" if c.isalpha() else re.escape(c) for c in name)
        for name in REFUSED_HEADERS
    )
    return {
        "maxProperties": MAX_HEADERS,
        "propertyNames": {
            "pattern": f"^{HEADER_NAME.pattern}$",
            "maxLength": MAX_HEADER_NAME,
            "not": {"pattern": f"^({refused})$"},
        },
        "additionalProperties": {"type": "string", "pattern": "^[^\\x00-\\x1f\\x7f]*$"},
    }


def _check_headers(headers: dict[str, str] | None, said: str = "") -> dict[str, str] | None:
    problems = header_problems(headers) if headers else []
    if problems:
        raise ValueError(said + "; ".join(problems))
    return headers


def _storable_url(url: str) -> str:
    # Postgres text cannot hold NUL, so such a URL could not even be recorded as failed.
    if "\x00" in url:
        raise ValueError("contains a NUL character, which cannot be stored")
    return url


class RequestSpec(BaseModel):
    """One request of a batch's ``requests``: its fields override the batch's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    url: str = Field(description="The URL, stored exactly as given.")
    method: Method | None = Field(default=None, description=_METHOD_DOC + " Default: the batch's.")
    json_body: JsonValue = Field(
        default=None, alias="json", description=_JSON_DOC + " Default: the batch's."
    )
    headers: dict[str, str] | None = Field(
        default=None,
        description="Extra headers, over the batch's (same rules).",
        json_schema_extra=_header_schema(),
    )

    @field_validator("url")
    @classmethod
    def _url_ok(cls, url: str) -> str:
        return _storable_url(url)

    @field_validator("headers")
    @classmethod
    def _headers_ok(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        return _check_headers(headers)


_STRICT: Final = ConfigDict(extra="forbid", strict=True, frozen=True)


class Cursor(BaseModel):
    """Cursor pagination: a value read from each page's body, sent as a query parameter."""

    model_config = _STRICT

    path: str = Field(
        description="Where the cursor is in a page's body (`meta.next_cursor`).",
        json_schema_extra={"pattern": PATH_PATTERN},
    )
    param: str = Field(
        min_length=1, description="The query parameter of the first page's URL that carries it."
    )

    @field_validator("path")
    @classmethod
    def _readable(cls, path: str) -> str:
        return _checked_path("paginate.cursor.path", path)


class Paginate(BaseModel):
    """How each request's pages are walked; see docs/jobs.md, "Paginated walks"."""

    # The schema says what `_one_style` checks, so the OpenAPI document refuses the same.
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["next"],
                    "properties": {"next": {"type": "string"}, "cursor": {"type": "null"}},
                },
                {
                    "required": ["cursor"],
                    "properties": {"cursor": {"type": "object"}, "next": {"type": "null"}},
                },
            ],
            "if": {"required": ["next"], "properties": {"next": {"const": "json"}}},
            "then": {"required": ["path"], "properties": {"path": {"type": "string"}}},
            "else": {"properties": {"path": {"type": "null"}}},
        },
    )

    next: Literal["link", "json"] | None = Field(
        default=None,
        description='`"link"`: follow `Link: <...>; rel="next"`; `"json"`: the next URL is in '
        "the body at `path`. Give `next` or `cursor`, not both.",
    )
    path: str | None = Field(
        default=None,
        description="With `next: json`: where the next URL is in a page's body: dotted keys and "
        "`[n]` list indexes (`links.next`, `data[-1].href`).",
        json_schema_extra={"pattern": PATH_PATTERN},
    )
    cursor: Cursor | None = Field(default=None, description="Cursor pagination.")
    max_pages: int = Field(
        default=DEFAULT_MAX_PAGES,
        ge=1,
        description="Pages walked per request at most, the first included; the walk stops "
        "there. At most HARVESTER_MAX_PAGES (1,000 by default).",
    )
    cross_origin: bool = Field(
        default=False,
        description="Follow next pages on another origin (scheme, host, port) than the first.",
    )

    @field_validator("path")
    @classmethod
    def _readable(cls, path: str | None) -> str | None:
        return None if path is None else _checked_path("paginate.path", path)

    @field_validator("max_pages")
    @classmethod
    def _capped(cls, max_pages: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_pages")
        if limit is not None and max_pages > limit:
            raise ValueError(
                f"'paginate.max_pages' is {max_pages}, over the limit of {limit} "
                "(HARVESTER_MAX_PAGES)"
            )
        return max_pages

    @model_validator(mode="after")
    def _one_style(self) -> Paginate:
        if (self.next is None) == (self.cursor is None):
            raise ValueError("'paginate' needs either 'next' (\"link\" or \"json\") or 'cursor'")
        if self.next == "json" and self.path is None:
            raise ValueError('\'paginate.path\' is required with "next": "json"')
        if self.next != "json" and self.path is not None:
            raise ValueError('\'paginate.path\' goes with "next": "json" only')
        return self

    def spec(self) -> PageSpec:
        """The engine's form of this walk."""
        if self.cursor is not None:
            return PageSpec(
                "cursor",
                parse_path(self.cursor.path),
                self.cursor.param,
                self.max_pages,
                self.cross_origin,
            )
        path = parse_path(self.path) if self.path is not None else ()
        style: Literal["link", "json"] = "json" if self.next == "json" else "link"
        return PageSpec(style, path, "", self.max_pages, self.cross_origin)


def _checked_path(field: str, path: str) -> str:
    try:
        parse_path(path)
    except ValueError as exc:
        raise ValueError(
            f"'{field}' is not a path: {exc} (a path is dotted keys and [n] indexes, "
            "e.g. links.next or data[-1].id)"
        ) from None
    return path


class Records(BaseModel):
    """Records: each element at ``path`` in a document's body, upserted by its ``key``."""

    model_config = _STRICT

    path: str = Field(
        min_length=1,
        description="A JSONPath (RFC 9535) to the records in each body: `$.data[*]`.",
        json_schema_extra={"pattern": "^\\$"},
    )
    key: str = Field(
        min_length=1,
        description="A JSONPath to each record's key, from the record: `$.id` (a string or a "
        "number).",
        json_schema_extra={"pattern": "^\\$"},
    )

    @field_validator("path", "key")
    @classmethod
    def _jsonpath(cls, path: str) -> str:
        try:
            compile_path(path)
        except ValueError as exc:
            raise ValueError(f"not a JSONPath: {exc}") from None
        return path

    def spec(self) -> RecordSpec:
        """The engine's compiled form."""
        return RecordSpec(self.path, self.key)


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
    method: Method = Field(default="GET", description=_METHOD_DOC)
    json_body: JsonValue = Field(default=None, alias="json", description=_JSON_DOC)
    headers: dict[str, str] = Field(
        default_factory=dict, description=_HEADERS_DOC, json_schema_extra=_header_schema()
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
        return _check_headers(headers, "'headers': ") or {}

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
        problems += describe(exc.errors(), kwargs)
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
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "int_type": "must be an integer",
}


def field_names(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` as a job spells them (``json``, not ``json_body``)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _path(loc: Sequence[int | str]) -> str:
    """A field's place as a caller writes it: ``requests[2].headers``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "payload"


def describe(errors: Sequence[ErrorDetails], data: Mapping[str, object]) -> list[str]:
    """One plain sentence per problem pydantic found in ``data`` (a job's keyword arguments)."""
    problems: list[str] = []
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    top = sorted(str(e["loc"][0]) for e in unknown if len(e["loc"]) == 1)
    if top:
        allowed = ", ".join(field_names(FetchBatch))
        problems.append(f"unknown field(s) {', '.join(map(repr, top))}; allowed: {allowed}")
    for e in unknown:
        if len(e["loc"]) > 1:
            problems.append(
                f"'{_path(e['loc'][:-1])}' has an unknown field {str(e['loc'][-1])!r}; allowed: "
                + ", ".join(field_names(_model_at(e["loc"][:-1])))
            )
    items = [e for e in errors if e["loc"][:1] == ("urls",) and e["type"] == "string_type"]
    if items:
        first = items[0]
        problems.append(
            f"'urls' must contain only strings: {len(items)} item(s) are not, "
            f"the first at index {first['loc'][1]} is {type(first['input']).__name__}"
        )
    for e in errors:
        if e["type"] != "extra_forbidden" and e not in items:
            problems.append(_sentence(e, data))
    return problems


def _model_at(loc: Sequence[int | str]) -> type[BaseModel]:
    """The model of the object at ``loc`` (a nested one: a request, paginate, its cursor)."""
    if loc[:1] == ("paginate",):
        return Cursor if len(loc) > 1 else Paginate
    if loc[:1] == ("records",):
        return Records
    return RequestSpec


def _sentence(error: ErrorDetails, data: Mapping[str, object]) -> str:
    field = _path(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"'{field}' is required"
    if kind in ("too_short", "string_too_short"):
        return f"'{field}' is empty"
    if kind == "string_too_long":
        return f"'{field}' is longer than {error.get('ctx', {}).get('max_length')} characters"
    if kind == "literal_error" and not field.startswith("paginate"):
        return f"'{field}' must be one of {', '.join(_METHODS)}, got {error['input']!r}"
    if kind == "literal_error":
        return f"'{field}' must be {error.get('ctx', {}).get('expected')}, got {error['input']!r}"
    if kind == "greater_than_equal":
        return (
            f"'{field}' must be at least {error.get('ctx', {}).get('ge')}, got {error['input']!r}"
        )
    if kind in _TYPE_WORDS:
        words = _TYPE_WORDS[kind]
        if field == "urls" and kind == "list_type":
            words = "must be a list of strings"
        elif field == "source" and kind == "string_type":
            words = "must be a string or null"
        return f"'{field}' {words}, got {type(error['input']).__name__}"
    if kind == "value_error":
        said = error["msg"].removeprefix("Value error, ")
        # A request's own validators do not know where the request is: say it for them.
        return f"'{field}': {said}" if len(error["loc"]) > 1 else said
    return f"'{field}': {error['msg']}"
