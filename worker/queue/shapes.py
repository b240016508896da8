"""The parts of a job that `FetchBatch` is made of: one request of ``requests`` (`RequestSpec`),
a paginated walk (`Paginate`, `Cursor`), records (`Records`), and the field rules they share."""

from __future__ import annotations

import re
from typing import Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.engine.pagination import DEFAULT_MAX_PAGES, PATH_PATTERN, PageSpec, parse_path
from worker.engine.records import RecordSpec, compile_path
from worker.engine.requests import (
    HEADER_NAME,
    MAX_HEADER_NAME,
    MAX_HEADERS,
    REFUSED_HEADERS,
    header_problems,
)

Method = Literal["GET", "POST", "PUT", "PATCH"]
METHODS: Final = get_args(Method)

METHOD_DOC: Final = "The HTTP method: GET (the default), POST, PUT or PATCH."
JSON_DOC: Final = (
    "A JSON request body, sent as application/json (POST, PUT and PATCH only; null: no body). "
    "Its SHA-256 is part of the outcome's identity."
)
HEADERS_DOC: Final = (
    "Extra request headers, {name: value}. Never secrets: a job is stored in Redis, so "
    "Authorization, Proxy-Authorization and Cookie are refused (use a credential profile), as "
    "are hop-by-hop headers, Host and Content-Length. At most 32, 8 KB in all."
)


def header_schema() -> dict[str, Any]:
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


def check_headers(headers: dict[str, str] | None, said: str = "") -> dict[str, str] | None:
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
    method: Method | None = Field(default=None, description=METHOD_DOC + " Default: the batch's.")
    json_body: JsonValue = Field(
        default=None, alias="json", description=JSON_DOC + " Default: the batch's."
    )
    headers: dict[str, str] | None = Field(
        default=None,
        description="Extra headers, over the batch's (same rules).",
        json_schema_extra=header_schema(),
    )

    @field_validator("url")
    @classmethod
    def _url_ok(cls, url: str) -> str:
        return _storable_url(url)

    @field_validator("headers")
    @classmethod
    def _headers_ok(cls, headers: dict[str, str] | None) -> dict[str, str] | None:
        return check_headers(headers)


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
