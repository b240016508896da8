"""Scheduled sources, the pure part: what a poll's outcome means for the source and its rows.

A poll is a conditional fetch of a registered source. `settle` turns its outcome into the
source's new state (`SourceUpdate`) and the row to land, if any: a changed body lands as a
document, a failure as a failure row, a 304 or a body identical to the last one lands nothing.
The update and the row go to Postgres in the same transaction (see `worker.engine.store`).

A poll is conditional only when it is a GET (`conditional`); a POST poll is always fetched and
only its content hash tells a change. A source with an incremental cursor (``since_param``,
``since_path``) is polled with its last cursor value in the query (`poll_request`), and the
value read from a fetched body at ``since_path`` becomes the next one (a body without it keeps
the old value). A paginated poll is conditional on its first page; the cursor is read from
that page, whose fetch settles the source, and every page lands (`walk_settled`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Final

import orjson
from yarl import URL

from worker.engine.outcomes import Failed, Fetched, NotModified, Outcome, Validators, outcome_key
from worker.engine.pagination import lookup, parse_path
from worker.engine.requests import Request, RequestKey
from worker.engine.schedule import next_poll_delay
from worker.settings import Settings

CHANGED = "changed"
UNCHANGED = "unchanged"
NOT_MODIFIED = "not_modified"
# A cursor is read from bodies up to this size (orjson builds the whole body as Python objects),
# and kept when it is at most this long (it goes into every next poll's URL).
SINCE_PARSE_MAX_BYTES: Final = 4 * 1024 * 1024
MAX_SINCE_VALUE: Final = 1024


def content_hash(body: bytes) -> bytes:
    """The fingerprint change detection compares: 16 bytes of BLAKE2b over the body as served."""
    return hashlib.blake2b(body, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class SourceState:
    """What is stored about a registered source before a poll."""

    id: int
    url: str
    interval_s: int
    etag: str | None
    last_modified: str | None
    content_hash: bytes | None
    consecutive_failures: int
    since_param: str | None = None
    since_path: str | None = None
    since_value: str | None = None

    @property
    def validators(self) -> Validators:
        # Even empty, validators make the fetch report the response's cache headers.
        return Validators(self.etag, self.last_modified)

    def conditional(self, request: Request) -> Validators | None:
        """The validators that make a poll by ``request`` conditional: GETs only (a POST
        asks something of the upstream each time, so it is always fetched)."""
        return self.validators if request.method == "GET" else None

    def cursor_in(self, body: bytes) -> str | None:
        """The cursor a fetched ``body`` gives the next poll (None: keep the last one)."""
        return None if self.since_path is None else read_cursor(body, self.since_path)


def read_cursor(body: bytes, path: str) -> str | None:
    """The value at ``path`` in the JSON ``body`` as query text, or None when the body is not
    JSON, too large to read, or holds no string or number there (or one too long to send)."""
    if len(body) > SINCE_PARSE_MAX_BYTES:
        return None
    try:
        value = lookup(orjson.loads(body), parse_path(path))
    except (orjson.JSONDecodeError, ValueError):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= MAX_SINCE_VALUE else None


def poll_request(state: SourceState, request: Request) -> Request:
    """``request`` as a poll of ``state`` sends it: with ``since_param=since_value`` in its
    query (replacing a value the URL has) when the source has a cursor value."""
    if state.since_param is None or state.since_value is None:
        return request
    url = str(URL(request.url).update_query({state.since_param: state.since_value}))
    return replace(request, url=url)


def answered(outcome: Outcome, request: Request) -> Outcome:
    """``outcome`` as the answer to the source's own ``request``: its rows and state keep the
    source's URL, not the URL with the cursor that was sent."""
    if outcome.url == request.url:
        return outcome
    if isinstance(outcome, NotModified):
        return replace(outcome, url=request.url)
    return replace(outcome, url=request.url, request=request)


@dataclass(frozen=True, slots=True)
class SourceUpdate:
    """A source's state after a poll, written with the poll's rows."""

    source_id: int
    url: str
    outcome: str  # changed | unchanged | not_modified | a failure kind
    ok: bool
    status: int | None
    error: str | None
    etag: str | None
    last_modified: str | None
    content_hash: bytes | None
    document: bool  # a documents row of this job holds the source's current content
    consecutive_failures: int
    delay_s: float
    since_value: str | None  # a new cursor for the next poll (None: keep the last one)
    # The identity of the poll's request in its job, which the update ends; None for the first
    # page of a walk, whose pages say when it ends.
    key: RequestKey | None

    def refused(self, detail: str) -> SourceUpdate:
        """This update when Postgres refused the body it was to land with."""
        return replace(
            self,
            outcome="invalid_json",
            ok=False,
            error=detail,
            content_hash=None,
            document=False,
            since_value=None,  # read from a body that did not land
            consecutive_failures=max(1, self.consecutive_failures),
        )


@dataclass(frozen=True, slots=True)
class Polled:
    """A settled poll: the source's update and the row to land with it, if any."""

    update: SourceUpdate
    row: Fetched | Failed | None


def walk_settled(state: SourceState, page: Fetched | Failed, settings: Settings) -> Polled:
    """The first page of a paginated poll as the poll's outcome: it settles the source (its
    validators, hash and cursor), and lands whatever its content, as every page does."""
    polled = settle(state, page, settings)
    landed = isinstance(page, Fetched)
    return Polled(replace(polled.update, document=landed, key=None), page)


def settle(state: SourceState, outcome: Outcome, settings: Settings) -> Polled:
    """Decide what a poll of ``state`` that ended in ``outcome`` records."""
    if isinstance(outcome, Failed):
        return _failed(state, outcome, settings)
    delay = next_poll_delay(
        interval=float(state.interval_s),
        max_delay=settings.sources_max_delay,
        ok=True,
        consecutive_failures=0,
        fresh=outcome.meta.fresh_for if outcome.meta is not None else None,
    )
    if isinstance(outcome, NotModified):
        return _not_modified(state, outcome, delay)
    return _fetched(state, outcome, delay, settings.sources_store_unchanged)


def _failed(state: SourceState, outcome: Failed, settings: Settings) -> Polled:
    failures = state.consecutive_failures + 1
    update = SourceUpdate(
        source_id=state.id,
        url=state.url,
        outcome=outcome.kind,
        ok=False,
        status=outcome.status,
        error=outcome.detail,
        etag=state.etag,
        last_modified=state.last_modified,
        content_hash=state.content_hash,
        document=False,
        consecutive_failures=failures,
        delay_s=next_poll_delay(
            interval=float(state.interval_s),
            max_delay=settings.sources_max_delay,
            ok=False,
            consecutive_failures=failures,
            retry_after=outcome.retry_after,
        ),
        since_value=None,
        key=outcome_key(outcome),
    )
    return Polled(update, outcome)


def _not_modified(state: SourceState, outcome: NotModified, delay: float) -> Polled:
    update = SourceUpdate(
        source_id=state.id,
        url=state.url,
        outcome=NOT_MODIFIED,
        ok=True,
        status=304,
        error=None,
        # A 304 may omit validators it does not change; keep the ones we have.
        etag=outcome.meta.etag or state.etag,
        last_modified=outcome.meta.last_modified or state.last_modified,
        content_hash=state.content_hash,
        document=False,
        consecutive_failures=0,
        delay_s=delay,
        since_value=None,
        key=(outcome.url, "GET", None),  # only a GET is conditional
    )
    return Polled(update, None)


def _fetched(state: SourceState, outcome: Fetched, delay: float, store_unchanged: bool) -> Polled:
    digest = content_hash(outcome.body)
    changed = digest != state.content_hash
    store = changed or store_unchanged
    meta = outcome.meta
    update = SourceUpdate(
        source_id=state.id,
        url=state.url,
        outcome=CHANGED if changed else UNCHANGED,
        ok=True,
        status=outcome.status,
        error=None,
        etag=meta.etag if meta is not None else None,
        last_modified=meta.last_modified if meta is not None else None,
        content_hash=digest,
        document=store,
        consecutive_failures=0,
        delay_s=delay,
        since_value=state.cursor_in(outcome.body),
        key=outcome_key(outcome),
    )
    return Polled(update, outcome if store else None)
