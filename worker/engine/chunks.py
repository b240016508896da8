"""A chunk: the rows one transaction lands for a job (documents, failures, its polls' source
states), and those rows as COPY records with the columns they fill. `worker.engine.writes`
lands it.

A chunk of plain GETs copies the columns it always did; only a chunk holding another request, or
pages of a walk, copies the request's or the page's columns too (their defaults are a plain
GET's and NULL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from worker.engine.leases import JobLease
from worker.engine.outcomes import Failed, Fetched, is_plain
from worker.engine.polling import SourceUpdate
from worker.engine.records import RecordSpec
from worker.engine.store import stored_url

_DOC_COLUMNS = ("job_id", "url", "source", "status", "body", "elapsed_ms", "attempts")
# ``auth`` is the job's credential profile name (never a secret), a constant of the chunk.
_FAIL_COLUMNS = ("job_id", "url", "source", "auth", "error", "status", "attempts", "detail")
# Only a chunk holding a request other than a plain GET copies these (the columns' defaults,
# GET and NULL, are a plain GET's), so plain batches COPY what they always did.
_REQUEST_COLUMNS = ("method", "body_hash", "request")
# Likewise, only a chunk holding pages of paginated walks copies these (NULL otherwise).
_DOC_PAGE_COLUMNS = ("page", "page_url", "next_url")
_FAIL_PAGE_COLUMNS = ("page", "page_url")


@dataclass(frozen=True, slots=True)
class Written:
    """Rows a chunk added; fewer than given means they were there already."""

    documents: int
    failures: int
    refused: tuple[Failed, ...] = ()
    records: int = 0  # records rows added or changed
    record_failures: tuple[str, ...] = ()  # the kinds of the chunk's record failures


@dataclass(frozen=True, slots=True)
class Chunk:
    """The rows one transaction lands for a job: documents, failures, and the source states of
    its scheduled polls."""

    job_id: str
    source: str | None
    docs: Sequence[Fetched] = ()
    fails: Sequence[Failed] = ()
    updates: Sequence[SourceUpdate] = ()
    # The run's lease, checked in the chunk's transaction; None: unfenced (tools, tests).
    lease: JobLease | None = None
    # The job's records (`worker.engine.records`), upserted with the documents; None: none.
    records: RecordSpec | None = None
    # The job's credential profile NAME (its ``auth``), kept with its failures so that a replay
    # sends it again; never the secret. None: no credentials.
    auth: str | None = None

    def stored(self, max_url_length: int) -> Chunk:
        """This chunk with every URL in its `stored_url` form (itself when all are short)."""
        docs = _in_stored_form(self.docs, max_url_length)
        fails = _in_stored_form(self.fails, max_url_length)
        if docs is self.docs and fails is self.fails:
            return self
        return replace(self, docs=docs, fails=fails)

    def doc_records(self) -> tuple[list[tuple[object, ...]], tuple[str, ...]]:
        """The documents as COPY records, and the columns they fill."""
        j, s = self.job_id, self.source
        requests, pages = _extras(self.docs)
        if not requests and not pages:
            rows: list[tuple[object, ...]] = [
                (j, d.url, s, d.status, d.body, d.elapsed_ms, d.attempts) for d in self.docs
            ]
            return rows, _DOC_COLUMNS
        if not requests:  # GET walks, the usual paginated batch: built inline, once a page
            rows = [
                (j, d.url, s, d.status, d.body, d.elapsed_ms, d.attempts, d.page, d.page_url,
                 d.next_url)
                for d in self.docs
            ]  # fmt: skip
            return rows, _DOC_COLUMNS + _DOC_PAGE_COLUMNS
        columns = (
            _DOC_COLUMNS
            + (_REQUEST_COLUMNS if requests else ())
            + (_DOC_PAGE_COLUMNS if pages else ())
        )
        return [self.doc_record(d, requests=requests, pages=pages) for d in self.docs], columns

    def doc_record(
        self, d: Fetched, *, requests: bool = True, pages: bool = True
    ) -> tuple[object, ...]:
        """A document's row: `_DOC_COLUMNS`, then the request's and the page's columns."""
        row: tuple[object, ...] = (
            *(self.job_id, d.url, self.source, d.status, d.body, d.elapsed_ms, d.attempts),
        )
        if requests:
            row += _request_fields(d)
        if pages:
            row += (d.page, d.page_url, d.next_url)
        return row

    def fail_records(
        self, fails: Sequence[Failed]
    ) -> tuple[list[tuple[object, ...]], tuple[str, ...]]:
        """``fails`` as COPY records, and the columns they fill."""
        j, s, a = self.job_id, self.source, self.auth
        requests, pages = _extras(fails)
        if not requests and not pages:
            rows: list[tuple[object, ...]] = [
                (j, f.url, s, a, f.kind, f.status, f.attempts, f.detail) for f in fails
            ]
            return rows, _FAIL_COLUMNS
        columns = (
            _FAIL_COLUMNS
            + (_REQUEST_COLUMNS if requests else ())
            + (_FAIL_PAGE_COLUMNS if pages else ())
        )
        records = []
        for f in fails:
            row: tuple[object, ...] = (j, f.url, s, a, f.kind, f.status, f.attempts, f.detail)
            if requests:
                row += _request_fields(f)
            if pages:
                row += (f.page, f.page_url)
            records.append(row)
        return records, columns


def _extras(outcomes: Sequence[Fetched] | Sequence[Failed]) -> tuple[bool, bool]:
    """Whether ``outcomes`` need the request columns (not all plain GETs) and the page columns
    (some are pages of walks)."""
    return (
        not all(map(is_plain, outcomes)),
        any(o.page is not None for o in outcomes),
    )


def _request_fields(outcome: Fetched | Failed) -> tuple[str, bytes | None, bytes | None]:
    """The method, body hash and body (canonical JSON, as jsonb) of an outcome's request."""
    r = outcome.request
    if r is None:
        return ("GET", None, None)
    return (r.method, r.body_hash, None if r.body is None else r.body.encoded)


_Outcome = TypeVar("_Outcome", Fetched, Failed)


def _in_stored_form(rows: Sequence[_Outcome], max_url_length: int) -> Sequence[_Outcome]:
    if all(len(r.url) <= max_url_length for r in rows):
        return rows
    return [replace(r, url=stored_url(r.url, max_url_length)) for r in rows]
