"""Record extraction, pure: paths, keys, hashes and the failure kinds, without Postgres."""

from __future__ import annotations

import re

import jsonpath
import orjson
import pytest

from worker.engine.outcomes import Fetched
from worker.engine.records import NO_KEY, NO_PATH, UNREADABLE, RecordSpec, compile_path


def doc(body: object, url: str = "https://a.example/", page: int | None = None) -> Fetched:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return Fetched(url, 200, raw, 1, 1, page=page)


BODY = {
    "data": [{"id": 1, "v": "a"}, {"id": "two"}, {"id": 3.5}],
    "meta": {"items": {"x": {"id": "mx"}, "y": {"id": "my"}}},
    "nested": {"list": [{"ref": {"id": 9}}]},
}


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("$.data[*]", "$.id"),
        ("$.meta.items[*]", "$.id"),
        ("$.nested.list[*]", "$.ref.id"),
        ("$.data", "$[0].id"),
        ("$['data'][*]", "$['id']"),
        ("$.data[?@.id > 2]", "$.id"),
        ("$..ref", "$.id"),
    ],
)
def test_plain_and_general_paths_find_what_jsonpath_finds(path: str, key: str) -> None:
    """The shortcut for plain paths ($.a.b[*], $.id) finds exactly what the JSONPath library
    finds, and general paths go through the library."""
    spec = RecordSpec(path, key)
    expected = [jsonpath.compile(key).findall(e)[0] for e in jsonpath.findall(path, BODY)]
    found = spec.extract([doc(BODY)])
    assert [r.key for r in found.records] == sorted(str(k) for k in expected)
    assert found.failures == []


def test_records_are_canonical_and_hashed() -> None:
    """A record's body is its JSON with sorted keys; equal records hash equal whatever their key
    order, and a changed one hashes differently."""
    spec = RecordSpec("$.data[*]", "$.id")
    a = spec.extract([doc({"data": [{"id": 1, "b": 2, "a": 1}]})]).records[0]
    b = spec.extract([doc({"data": [{"a": 1, "id": 1, "b": 2}]})]).records[0]
    c = spec.extract([doc({"data": [{"a": 1, "id": 1, "b": 3}]})]).records[0]
    assert a.body == b'{"a":1,"b":2,"id":1}'
    assert a.hash == b.hash != c.hash
    assert len(a.hash) == 16


def test_a_key_seen_twice_in_a_chunk_keeps_the_last_sighting() -> None:
    """One statement cannot upsert a key twice: the chunk keeps each key's last record, with its
    document."""
    spec = RecordSpec("$.data[*]", "$.id")
    found = spec.extract(
        [doc({"data": [{"id": 1, "v": 1}]}, "u1"), doc({"data": [{"id": 1, "v": 2}]}, "u2")]
    )
    assert [(r.key, r.url, orjson.loads(r.body)["v"]) for r in found.records] == [("1", "u2", 2)]


def test_failure_kinds() -> None:
    """No path: records_no_path (an empty list at the path is no failure); elements without a
    string or number key: one records_no_key per document, the others kept; a body that cannot
    be parsed: records_unreadable."""
    spec = RecordSpec("$.data[*]", "$.id")
    found = spec.extract(
        [
            doc({"other": []}, "nopath"),
            doc({"data": []}, "empty"),
            doc({"data": [{"id": True}, {"id": [1]}, {"id": {}}, {"x": 1}, {"id": "ok"}]}, "k"),
            doc(b'{"data": [{"id": 1}], "deep": ' + b"[" * 1100 + b"]" * 1100 + b"}", "deep"),
            doc({"data": [1, 2]}, "scalars", page=2),
        ]
    )
    assert [r.key for r in found.records] == ["ok"]
    assert [(f.url, f.page, f.kind) for f in found.failures] == [
        ("nopath", None, NO_PATH),
        ("k", None, NO_KEY),
        ("deep", None, UNREADABLE),
        ("scalars", 2, NO_KEY),
    ]
    assert found.failures[1].detail.startswith("4 of 5 records have no key at $.id")


@pytest.mark.parametrize(
    ("path", "said"),
    [
        ("data[*]", "must start with '$'"),
        ("$.data[", "unexpected end of query"),
        ("$[?", "unexpected end"),
    ],
)
def test_a_bad_path_is_refused_in_one_line(path: str, said: str) -> None:
    """compile_path says why a path is not JSONPath, in one line."""
    with pytest.raises(ValueError, match=re.escape(said)) as caught:
        compile_path(path)
    assert "\n" not in str(caught.value)
