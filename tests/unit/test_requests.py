"""The Request value: identity, canonical bodies, and the header rules of a job."""

from __future__ import annotations

import hashlib

import pytest

from worker.engine.requests import (
    MAX_HEADERS,
    REFUSED_HEADERS,
    Body,
    Request,
    canonical_json,
    header_problems,
    merged_headers,
)


def test_a_body_is_encoded_canonically_and_hashed_once() -> None:
    """Key order and spacing do not change a body's encoding or hash; non-ASCII stays UTF-8."""
    a = Body.of({"b": [1, 2.5, None], "a": "é"})
    b = Body.of({"a": "é", "b": [1, 2.5, None]})
    assert a.encoded == b.encoded == '{"a":"é","b":[1,2.5,null]}'.encode()
    assert a == b
    assert a.digest == hashlib.sha256(a.encoded).digest()


def test_identity_is_url_method_and_body_not_headers() -> None:
    """Equal requests are one outcome; headers do not make a request another one."""
    body = Body.of({"q": 1})
    same = {
        Request("http://a/", "POST", body, {"X-A": "1"}),
        Request("http://a/", "POST", Body.of({"q": 1}), {"X-A": "2"}),
    }
    assert len(same) == 1
    assert Request("http://a/").key() == ("http://a/", "GET", None)
    assert Request("http://a/").plain
    assert not Request("http://a/", "POST").plain
    assert Request("http://a/", "POST", body).key()[2] == body.digest


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"a": "x\x00y"}, "NUL"),
        ([float("nan")], "not JSON"),
        ({"a": object()}, "not JSON"),
        ("\ud800", "surrogate"),
    ],
)
def test_bodies_that_cannot_be_sent_and_stored_are_refused(value: object, why: str) -> None:
    """A body Postgres could not store, or that is not JSON, is refused with a reason."""
    with pytest.raises(ValueError, match=why):
        canonical_json(value)


def test_a_literal_backslash_u0000_is_not_a_nul() -> None:
    """The text \\u0000 (a backslash and five characters) is storable."""
    assert canonical_json("\\u0000") == b'"\\\\u0000"'


def test_a_get_has_no_body_and_methods_are_known() -> None:
    """The value refuses what no job may ask for."""
    with pytest.raises(ValueError, match="has no body"):
        Request("http://a/", "GET", Body.of(1))
    with pytest.raises(ValueError, match="not one of"):
        Request("http://a/", "DELETE")


@pytest.mark.parametrize("name", sorted(REFUSED_HEADERS))
def test_refused_headers_in_any_case(name: str) -> None:
    """Secrets, hop-by-hop headers, Host and Content-Length are refused whatever their case."""
    for spelled in (name, name.upper(), name.title()):
        (problem,) = header_problems({spelled: "x"})
        assert "is refused" in problem


def test_secret_headers_say_why_and_where_to_go() -> None:
    """The refusal of a secret header says it would land in Redis and names the alternative."""
    (problem,) = header_problems({"Authorization": "Bearer t"})
    assert "Redis" in problem
    assert "'auth'" in problem


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"X-A": "a\r\nB: c"}, "control character"),
        ({"X-A": "a\nb"}, "control character"),
        ({"Bad Name": "x"}, "not a header name"),
        ({"X:Y": "x"}, "not a header name"),
        ({"X-" + "a" * 70: "x"}, "not a header name"),
        ({"X-A": "v" * 3000}, "longer than"),
        ({f"X-{i}": "v" for i in range(MAX_HEADERS + 1)}, "over the limit"),
        ({f"X-{i}": "v" * 2000 for i in range(5)}, "bytes of headers"),
    ],
)
def test_headers_are_bounded_and_printable(headers: dict[str, str], why: str) -> None:
    """Header names are tokens, values printable and short, the set bounded in count and size."""
    assert any(why in p for p in header_problems(headers))


def test_good_headers_pass() -> None:
    """Ordinary API headers are accepted."""
    assert header_problems({"Accept": "application/vnd.x+json", "X-Api-Version": "2"}) == []


def test_request_headers_override_the_batchs_case_insensitively() -> None:
    """A request's header replaces the batch's of the same name; no headers share the batch's."""
    base = {"X-Tenant": "a", "Accept": "application/json"}
    assert merged_headers(base, {"x-tenant": "b"}) == {
        "Accept": "application/json",
        "x-tenant": "b",
    }
    assert merged_headers(base, {}) is base
