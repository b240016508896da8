"""The values a fetch produces and a run reports: one frozen dataclass per kind of outcome.

A URL ends as a `Fetched` document, a `Failed` (with a stable ``kind``) or, for a conditional
poll, `NotModified`; a run of a batch ends as a `BatchSummary`. Kept apart from the fetcher so
that the store, the pipeline, polling and metrics can name them without importing aiohttp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from worker.engine.requests import Request, RequestKey
from worker.engine.schedule import fresh_for

_MAX_VALIDATOR: Final = 1024


@dataclass(frozen=True, slots=True)
class Validators:
    """What a scheduled source's last response said, sent back to make a request conditional."""

    etag: str | None = None
    last_modified: str | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.etag:
            headers["If-None-Match"] = self.etag
        if self.last_modified:
            headers["If-Modified-Since"] = self.last_modified
        return headers


@dataclass(frozen=True, slots=True)
class ResponseMeta:
    """Cache headers of a response to a conditional request: the next request's validators and
    how long the server says the content stays fresh (seconds, or None if it does not say)."""

    etag: str | None
    last_modified: str | None
    fresh_for: float | None

    @classmethod
    def from_headers(cls, h: Mapping[str, str]) -> ResponseMeta:
        """The cache headers of a response (only short printable ASCII validators are kept)."""
        return cls(
            etag=_validator(h.get("ETag")),
            last_modified=_validator(h.get("Last-Modified")),
            fresh_for=fresh_for(h.get("Cache-Control"), h.get("Expires"), h.get("Date")),
        )


def _validator(value: str | None) -> str | None:
    # Stored and sent back as is: only a short printable ASCII value can be (aiohttp keeps
    # undecodable header bytes as surrogates, which Postgres text cannot hold).
    if (
        value is None
        or len(value) > _MAX_VALIDATOR
        or not value.isascii()
        or not value.isprintable()
    ):
        return None
    return value


@dataclass(frozen=True, slots=True)
class Fetched:
    """A URL landed as JSON. ``meta`` is set for conditional requests only; ``request`` is the
    request fetched (None: a plain GET of ``url``). ``links`` (the response's ``Link`` headers)
    is set for pages of a walk that follows them. A page of a walk has ``url`` the URL as
    enqueued, its ``page`` number, ``page_url``, and ``next_url`` (None on the walk's last
    page)."""

    url: str
    status: int
    body: bytes
    elapsed_ms: int
    attempts: int
    meta: ResponseMeta | None = None
    request: Request | None = None
    links: tuple[str, ...] = ()
    page: int | None = None
    page_url: str | None = None
    next_url: str | None = None


@dataclass(frozen=True, slots=True)
class NotModified:
    """A conditional request answered 304: the stored content is still current."""

    url: str
    elapsed_ms: int
    attempts: int
    meta: ResponseMeta


@dataclass(frozen=True, slots=True)
class Failed:
    """A URL that could not be landed, with a stable ``kind`` and a human ``detail``;
    ``request`` as in `Fetched`; for a page of a walk, the ``page`` that could not be landed
    and its ``page_url`` when known."""

    url: str
    kind: str
    detail: str
    status: int | None
    attempts: int
    retry_after: float | None = None
    request: Request | None = None
    page: int | None = None
    page_url: str | None = None


Outcome = Fetched | Failed | NotModified


def outcome_key(outcome: Fetched | Failed) -> RequestKey:
    """The identity of the request ``outcome`` answers, with the outcome's URL (which is the
    stored form once a chunk is written)."""
    request = outcome.request
    if request is None:
        return (outcome.url, "GET", None)
    return request.key(outcome.url)


def is_plain(outcome: Fetched | Failed) -> bool:
    """True if ``outcome`` answers a GET without a body (its row needs no request columns)."""
    return outcome.request is None or outcome.request.plain


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What one run of a batch did. JSON-serialisable through `as_dict`."""

    job_id: str
    source: str | None
    urls: int
    distinct_urls: int
    already_done: int
    documents: int
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    unchanged: int = 0  # scheduled polls whose body had not changed: no row
    not_modified: int = 0  # scheduled polls answered 304: no row
    pages: int = 0  # documents that are pages of paginated walks (counted in documents too)
    records: int = 0  # records rows added or changed (`worker.engine.records`)
    # Documents whose records could not all be read, by kind; each document landed too.
    record_failures: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def urls_per_second(self) -> float:
        done = self.documents + self.failed + self.unchanged + self.not_modified
        return done / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "source": self.source,
            "urls": self.urls,
            "distinct_urls": self.distinct_urls,
            "already_done": self.already_done,
            "documents": self.documents,
            "failures": dict(sorted(self.failures.items())),
            "unchanged": self.unchanged,
            "not_modified": self.not_modified,
            "pages": self.pages,
            "records": self.records,
            "record_failures": dict(sorted(self.record_failures.items())),
            "seconds": round(self.seconds, 3),
            "urls_per_second": round(self.urls_per_second, 1),
        }
