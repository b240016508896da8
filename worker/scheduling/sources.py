"""Registered sources in Postgres, managed (``harvester sources ...``, the API, the dashboard):
added with what their polls send, listed, enabled or disabled, removed. Claiming the due ones
and loading their state is `worker.scheduling.polls`.

A source's poll is a request like any job's: its method, JSON body and extra headers are stored
with it (judged by the job contract when it is added), and go out in the poll job as one of its
``requests`` (plain GET sources as ``urls``, as before). Its incremental cursor is not in the
job: the worker reads it with the source's state and puts it in the query
(`worker.engine.polling.poll_request`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg

from worker.engine import store
from worker.engine.pagination import parse_path
from worker.engine.requests import NO_HEADERS, Request, canonical_json
from worker.errors import BadJobError
from worker.queue.checks import url_problem
from worker.queue.payload import make_batch

# A cursor's query parameter: a plain name, so that it reads the same in every URL.
_SINCE_PARAM: Final = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")

_UPSERT = """
INSERT INTO sources (url, name, interval_s, auth, method, body, headers, paginate, since_param,
                     since_path, records, notify_url)
SELECT u, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 FROM unnest($1::text[]) AS u
ON CONFLICT (harvester_url_key(url)) DO UPDATE
    SET name = EXCLUDED.name, interval_s = EXCLUDED.interval_s, auth = EXCLUDED.auth,
        method = EXCLUDED.method, body = EXCLUDED.body, headers = EXCLUDED.headers,
        paginate = EXCLUDED.paginate, records = EXCLUDED.records,
        notify_url = EXCLUDED.notify_url,
        since_param = EXCLUDED.since_param, since_path = EXCLUDED.since_path,
        -- A cursor read by another path, or sent as another parameter, means nothing now.
        since_value = CASE
            WHEN (sources.since_param, sources.since_path)
                IS NOT DISTINCT FROM (EXCLUDED.since_param, EXCLUDED.since_path)
            THEN sources.since_value END,
        next_due_at = LEAST(sources.next_due_at, now() + make_interval(secs => EXCLUDED.interval_s))
RETURNING (xmax = 0) AS inserted
"""

_LIST = """
SELECT id, url, name, auth, method, body, headers, paginate, records, notify_url, since_param,
       since_path, since_value, interval_s, enabled, next_due_at, last_polled_at, last_status,
       last_outcome, consecutive_failures, last_success_at, poll_job_id
FROM sources
WHERE ($1::text IS NULL OR name = $1)
ORDER BY id
LIMIT $2
"""


@dataclass(frozen=True, slots=True)
class SourceRow:
    """A registered source as `harvester sources list` shows it."""

    id: int
    url: str
    name: str | None
    auth: str | None
    method: str
    body: Any  # the JSON request body; None: none
    headers: dict[str, str]
    paginate: dict[str, Any] | None  # a job's paginate object; None: one page
    records: dict[str, Any] | None  # a job's records object; None: no records
    notify_url: str | None  # each poll job's webhook; None: none
    since_param: str | None
    since_path: str | None
    since_value: str | None
    interval_s: int
    enabled: bool
    next_due_at: datetime
    last_polled_at: datetime | None
    last_status: int | None
    last_outcome: str | None
    consecutive_failures: int
    last_success_at: datetime | None
    poll_job_id: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            name: (value.isoformat() if isinstance(value, datetime) else value)
            for name, value in ((f, getattr(self, f)) for f in self.__slots__)
        }


@dataclass(frozen=True, slots=True)
class PollSpec:
    """What a source's polls send beyond its URL, judged by `poll_spec`."""

    auth: str | None = None
    method: str = "GET"
    body: bytes | None = None  # canonical JSON
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS)
    paginate: bytes | None = None  # canonical JSON of a job's paginate object
    since_param: str | None = None
    since_path: str | None = None
    records: bytes | None = None  # canonical JSON of a job's records object
    notify_url: str | None = None  # each poll job's notify_url


def poll_spec(
    *,
    name: str | None = None,
    auth: str | None = None,
    request: Mapping[str, Any] | None = None,
    since_param: str | None = None,
    since_path: str | None = None,
    profiles: Collection[str] | None = None,
    max_pages: int | None = None,
    webhooks: bool | None = None,
) -> PollSpec:
    """A source's `PollSpec` from its credential profile, its ``request`` fields (``method``,
    ``json``, ``headers``, ``paginate``, ``records``, ``notify_url``, as a job spells them) and
    cursor settings; `BadJobError` saying what is wrong. The request is judged by the job
    contract (`FetchBatch`), as a poll job will be, under the source's ``name`` (which
    ``records`` needs); ``webhooks`` False (no HARVESTER_WEBHOOK_SECRET) refuses a
    ``notify_url``."""
    batch = make_batch(
        urls=["https://example.invalid/"],
        scheduled=True,
        source=name,
        auth=auth,
        profiles=profiles,
        max_pages=max_pages,
        webhooks=webhooks,
        **(request or {}),
    )
    req: Request = batch.requests_of()[0]
    if (since_param is None) != (since_path is None):
        raise BadJobError("give both --since-param and --since-path, or neither")
    if since_param is not None and not _SINCE_PARAM.fullmatch(since_param):
        raise BadJobError(
            f"--since-param {since_param[:80]!r} is not a query parameter name "
            "(letters, digits, '_', '.', '-', '[', ']'; at most 64)"
        )
    if since_path is not None:
        try:
            parse_path(since_path)
        except ValueError as exc:
            raise BadJobError(f"--since-path is not a body path: {exc}") from None
    return PollSpec(
        auth=batch.auth,
        method=req.method,
        body=None if req.body is None else req.body.encoded,
        headers=req.headers,
        paginate=None if batch.paginate is None else canonical_json(batch.as_kwargs()["paginate"]),
        since_param=since_param,
        since_path=since_path,
        records=None if batch.records is None else canonical_json(batch.as_kwargs()["records"]),
        notify_url=batch.notify_url,
    )


def check_urls(urls: Iterable[str]) -> list[str]:
    """The distinct URLs of ``urls`` (stripped, blanks dropped), or `BadJobError` naming those
    that cannot be polled (not http(s), no host, spaces...)."""
    unique = list(dict.fromkeys(u.strip() for u in urls if u.strip()))
    bad = [(u, p) for u in unique if (p := url_problem(u)) is not None]
    if bad:
        shown = "; ".join(f"{u!r} {p}" for u, p in bad[:5])
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise BadJobError(f"{len(bad)} URL(s) cannot be polled: {shown}{more}")
    return unique


async def add(
    pool: asyncpg.Pool,
    urls: Iterable[str],
    *,
    every: float,
    name: str | None,
    spec: PollSpec | None = None,
) -> tuple[int, int]:
    """Register ``urls`` (or update their interval, name and what their polls send: ``spec``,
    from `poll_spec`; None: plain GETs); return (added, updated). A changed cursor setting
    forgets the cursor's value.

    Raises `BadJobError` naming the URLs that cannot be polled (not http(s), no host...),
    before anything is registered.
    """
    unique = check_urls(urls)
    if name is not None:
        # A name no poll job may carry would fail every claim that holds this source.
        make_batch(urls=["https://example.invalid/"], scheduled=True, source=name)
    if not unique:
        return 0, 0
    p = spec or PollSpec()
    with store.translated("cannot register sources"):
        rows = await pool.fetch(
            _UPSERT,
            unique,
            name,
            max(1, round(every)),
            p.auth,
            p.method,
            p.body,
            canonical_json(dict(p.headers)),  # jsonb takes JSON text
            p.paginate,
            p.since_param,
            p.since_path,
            p.records,
            p.notify_url,
        )
    added = sum(1 for r in rows if r["inserted"])
    return added, len(rows) - added


def _targets(ids_or_urls: Sequence[str]) -> tuple[list[int], list[str]]:
    ids = [int(x) for x in ids_or_urls if x.isdigit()]
    urls = [x for x in ids_or_urls if not x.isdigit()]
    return ids, urls


_MATCH = """(id = ANY($1::bigint[])
    OR harvester_url_key(url) = ANY (SELECT harvester_url_key(u) FROM unnest($2::text[]) AS u))"""


async def set_enabled(pool: asyncpg.Pool, ids_or_urls: Sequence[str], enabled: bool) -> int:
    """Enable or disable sources given by id or URL; return how many matched."""
    sql = f"UPDATE sources SET enabled = $3 WHERE {_MATCH}"  # noqa: S608 - a constant
    return await _change(pool, "cannot change sources", sql, ids_or_urls, enabled)


async def remove(pool: asyncpg.Pool, ids_or_urls: Sequence[str]) -> int:
    """Delete sources given by id or URL (their documents stay); return how many."""
    sql = f"DELETE FROM sources WHERE {_MATCH}"  # noqa: S608 - a constant
    return await _change(pool, "cannot remove sources", sql, ids_or_urls)


async def _change(
    pool: asyncpg.Pool, what: str, sql: str, ids_or_urls: Sequence[str], *more: object
) -> int:
    ids, urls = _targets(ids_or_urls)
    with store.translated(what):
        return store.rows_affected(await pool.execute(sql, ids, urls, *more))


async def list_sources(
    pool: asyncpg.Pool, *, name: str | None = None, limit: int = 1000
) -> list[SourceRow]:
    """Registered sources, oldest first."""
    with store.translated("cannot list sources"):
        rows = await pool.fetch(_LIST, name, limit)
    return [SourceRow(**dict(r)) for r in rows]
