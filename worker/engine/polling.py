"""Scheduled sources, the pure part: what a poll's outcome means for the source and its rows.

A poll is a conditional fetch of a registered source. `settle` turns its outcome into the
source's new state (`SourceUpdate`) and the row to land, if any: a changed body lands as a
document, a failure as a failure row, a 304 or a body identical to the last one lands nothing.
The update and the row go to Postgres in the same transaction (see `worker.engine.store`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from worker.engine.outcomes import Failed, Fetched, NotModified, Outcome, Validators
from worker.engine.schedule import next_poll_delay
from worker.settings import Settings

CHANGED = "changed"
UNCHANGED = "unchanged"
NOT_MODIFIED = "not_modified"


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

    @property
    def validators(self) -> Validators:
        # Even empty, validators make the fetch report the response's cache headers.
        return Validators(self.etag, self.last_modified)


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

    def refused(self, detail: str) -> SourceUpdate:
        """This update when Postgres refused the body it was to land with."""
        return replace(
            self,
            outcome="invalid_json",
            ok=False,
            error=detail,
            content_hash=None,
            document=False,
            consecutive_failures=max(1, self.consecutive_failures),
        )


@dataclass(frozen=True, slots=True)
class Polled:
    """A settled poll: the source's update and the row to land with it, if any."""

    update: SourceUpdate
    row: Fetched | Failed | None


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
    )
    return Polled(update, outcome if store else None)
