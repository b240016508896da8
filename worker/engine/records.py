"""Records: the elements a JSONPath finds in a document's body, keyed by another JSONPath, hashed,
and upserted by (source, key) in the transaction that lands the document.

A job (or scheduled source) with ``records: {"path": "$.data[*]", "key": "$.id"}`` gets, for each
document it lands (each page of a walk too), one `Record` per element at ``path``: the element's
canonical JSON (sorted keys), a BLAKE2b-128 of it, and its key (a string or number, as text). A
body whose path finds nothing, an element without a key, or a body that cannot be parsed is a
`RecordFailure` of its own kind for that document; the document still lands (it is the URL's one
outcome). Extraction is pure CPU work in the worker: each body is parsed once, the paths are
compiled once per job, and the plain shapes (``$.a.b[*]``, ``$.id``) skip the JSONPath machinery.
`upsert` sends a chunk's records in one statement (unnest arrays: no session state, so it works
behind pgbouncer); see sql/012_records.sql and docs/data-model.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

import orjson

from worker.engine.bodies import clean_detail
from worker.engine.outcomes import Fetched
from worker.engine.store import Conn

if TYPE_CHECKING:  # python-jsonpath takes ~50 ms to import: only jobs with records load it
    from jsonpath import CompoundJSONPath, JSONPath

NO_PATH: Final = "records_no_path"
NO_KEY: Final = "records_no_key"
UNREADABLE: Final = "records_unreadable"
KINDS: Final = (NO_PATH, NO_KEY, UNREADABLE)

_SORTED: Final = orjson.OPT_SORT_KEYS

_MISSING: Final = object()


def compile_path(path: str) -> JSONPath | CompoundJSONPath:
    """``path`` compiled, or `ValueError` saying why it is not a JSONPath."""
    import jsonpath  # here, not at the top: see TYPE_CHECKING above

    if not path.startswith("$"):
        raise ValueError("must start with '$' (e.g. $.data[*])")
    try:
        return jsonpath.compile(path)
    except jsonpath.JSONPathError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(first) from None


def _plain(path: JSONPath | CompoundJSONPath) -> tuple[tuple[str, ...], bool]:
    """``path``'s member names and whether it ends in ``[*]``, when it is only that (``$.a.b``,
    ``$.a.b[*]``); ``((), False)`` otherwise (``$`` alone is also plain: no names, no star)."""
    from jsonpath import JSONPath  # loaded already by compile_path
    from jsonpath.segments import JSONPathChildSegment
    from jsonpath.selectors import NameSelector, WildcardSelector

    if not isinstance(path, JSONPath):
        return (), False
    names: list[str] = []
    segments = path.segments
    star = False
    for i, segment in enumerate(segments):
        selectors = segment.selectors
        if not isinstance(segment, JSONPathChildSegment) or len(selectors) != 1:
            return (), False
        selector = selectors[0]
        if isinstance(selector, NameSelector):
            names.append(selector.name)
        elif isinstance(selector, WildcardSelector) and i == len(segments) - 1:
            star = True
        else:
            return (), False
    return tuple(names), star


def _walk(value: object, names: Sequence[str]) -> object:
    for name in names:
        if not isinstance(value, dict):
            return _MISSING
        value = value.get(name, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


class Record(NamedTuple):
    """One element of a document's body, ready to upsert. A named tuple, not a frozen
    dataclass: one is made per record, and a frozen dataclass costs three times as much to
    build (measured: 4.5 against 1.5 µs per record, hash and canonical JSON included)."""

    key: str
    body: bytes  # canonical JSON: keys sorted
    hash: bytes
    url: str
    page: int | None


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """What a document's records lack: the path found nothing, an element had no key, or the
    body could not be parsed (``kind``: one of `KINDS`)."""

    url: str
    page: int | None
    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class Extracted:
    """The records of a chunk's documents (one per key: the last sighting wins) and the failures
    of the documents whose records could not all be read."""

    records: Sequence[Record] = ()
    failures: Sequence[RecordFailure] = ()


class RecordSpec:
    """A job's ``records``, compiled once: where the records are and where each one's key is."""

    __slots__ = ("_key", "_key_names", "_path", "_path_names", "_simple", "_star", "key", "path")

    def __init__(self, path: str, key: str) -> None:
        self.path, self.key = path, key
        self._path = compile_path(path)
        self._key = compile_path(key)
        self._path_names, self._star = _plain(self._path)
        self._key_names, key_star = _plain(self._key)
        self._simple = bool(self._key_names) and not key_star

    def elements(self, body: object) -> list[object] | None:
        """The elements at the path in ``body``; None when the path is not there."""
        if self._path_names or self._star or str(self._path) == "$":
            found = _walk(body, self._path_names)
            if found is _MISSING:
                return None
            if not self._star:
                return [found]
            if isinstance(found, list):
                return found
            return list(found.values()) if isinstance(found, dict) else None
        elements: list[object] = self._path.findall(body)  # type: ignore[arg-type]
        return elements or None

    def key_of(self, element: object) -> str | None:
        """The element's key as text (a string or a number; anything else is no key)."""
        if self._simple:
            names = self._key_names
            if len(names) == 1:  # $.id, the usual key: one lookup
                value = element.get(names[0], _MISSING) if isinstance(element, dict) else _MISSING
            else:
                value = _walk(element, names)
        else:
            match = next(iter(self._key.finditer(element)), None)  # type: ignore[arg-type]
            value = _MISSING if match is None else match.obj
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return None

    def extract(self, docs: Iterable[Fetched]) -> Extracted:
        """The records of ``docs``, deduplicated by key (the last one wins, as it would in
        Postgres) and sorted by it, so that chunks of one source landing at once lock their
        common rows in one order (no deadlock); and one failure per document whose records
        could not all be read."""
        by_key: dict[str, Record] = {}
        failures: list[RecordFailure] = []
        for doc in docs:
            failure = self._extract_one(doc, by_key)
            if failure is not None:
                failures.append(failure)
        return Extracted([by_key[k] for k in sorted(by_key)], failures)

    def _extract_one(self, doc: Fetched, into: dict[str, Record]) -> RecordFailure | None:
        try:
            body = orjson.loads(doc.body)
        except orjson.JSONDecodeError as exc:
            detail = clean_detail(f"the body could not be parsed for records: {exc}")
            return RecordFailure(doc.url, doc.page, UNREADABLE, detail)
        elements = self.elements(body)
        if elements is None:
            detail = f"the records path {self.path} found nothing in the body"
            return RecordFailure(doc.url, doc.page, NO_PATH, detail)
        keyless = 0
        dumps, blake2b, url, page = orjson.dumps, hashlib.blake2b, doc.url, doc.page
        for element in elements:
            key = self.key_of(element)
            if key is None:
                keyless += 1
                continue
            canonical = dumps(element, option=_SORTED)
            digest = blake2b(canonical, digest_size=16).digest()  # 128 bits
            into[key] = Record(key, canonical, digest, url, page)
        if keyless:
            detail = (
                f"{keyless} of {len(elements)} records have no key at {self.key} "
                "(a string or a number); the others landed"
            )
            return RecordFailure(doc.url, doc.page, NO_KEY, detail)
        return None


# One statement per chunk: new records are inserted, changed ones updated (body, hash, document,
# changed_at) and unchanged ones left alone (no new row version), then every sighting moves
# last_seen in the narrow record_seen table. Returns how many records rows were written.
_UPSERT = """
WITH v AS (
    SELECT * FROM unnest($3::text[], $4::jsonb[], $5::bytea[], $6::text[], $7::integer[])
        AS v(key, body, hash, url, page)
), written AS (
    INSERT INTO records AS r (source, key, body, hash, job_id, url, page)
    SELECT $1, key, body, hash, $2, url, page FROM v
    ON CONFLICT (source, key) DO UPDATE
        SET body = EXCLUDED.body, hash = EXCLUDED.hash, job_id = EXCLUDED.job_id,
            url = EXCLUDED.url, page = EXCLUDED.page, changed_at = now()
        WHERE r.hash <> EXCLUDED.hash
    RETURNING 1
), seen AS (
    INSERT INTO record_seen AS s (source, key, last_seen)
    SELECT $1, key, now() FROM v
    ON CONFLICT (source, key) DO UPDATE SET last_seen = EXCLUDED.last_seen
)
SELECT count(*) FROM written
"""

_FAILURES = """
INSERT INTO record_failures (job_id, source, url, page, kind, detail)
SELECT $1, $2, url, page, kind, detail
FROM unnest($3::text[], $4::integer[], $5::text[], $6::text[]) AS v(url, page, kind, detail)
ON CONFLICT DO NOTHING
"""


async def upsert(conn: Conn, job_id: str, source: str, extracted: Extracted) -> int:
    """Land ``extracted`` for ``job_id`` under ``source`` on ``conn`` (inside the chunk's
    transaction); return the records rows added or changed."""
    written = 0
    records = extracted.records
    if records:
        written = await conn.fetchval(
            _UPSERT,
            source,
            job_id,
            [r.key for r in records],
            [r.body for r in records],
            [r.hash for r in records],
            [r.url for r in records],
            [r.page for r in records],
        )
    fails = extracted.failures
    if fails:
        await conn.execute(
            _FAILURES,
            job_id,
            source,
            [f.url for f in fails],
            [f.page for f in fails],
            [f.kind for f in fails],
            [f.detail for f in fails],
        )
    return int(written or 0)
