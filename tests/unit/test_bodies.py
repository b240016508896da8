"""Body rules and Retry-After parsing: what may land, read without a network."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import textwrap
from email.utils import formatdate

import orjson
import pytest

from worker.engine import bodies
from worker.engine.bodies import PARSE_MAX_BYTES, check_json, has_exponent
from worker.engine.session import parse_retry_after
from worker.errors import InvalidJSONError


def test_parse_retry_after_seconds_and_dates() -> None:
    """Both forms of Retry-After are understood; junk is ignored."""
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") is None
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == pytest.approx(30)
    assert parse_retry_after(formatdate(999_000, usegmt=True), now=1_000_000) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    "value", ["Fri, 31 Dec 2020 23:59:59 +99999999999999999", "inf", "1e400", "nan"]
)
def test_absurd_retry_after_values_are_ignored(value: str) -> None:
    """A date with an absurd zone offset used to raise OverflowError (the URL then landed as
    `internal`); it, and infinite delays, now read as no Retry-After."""
    assert parse_retry_after(value) is None


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"nope", b"\xff\xfe{}", b'"\\ud800"', b'{"a": "x\\u0000y"}', b"\xef\xbb\xbf{}"],
)
def test_check_json_refuses_what_postgres_would(body: bytes) -> None:
    """Invalid JSON, bad UTF-8, lone surrogates, NUL escapes and BOMs are refused."""
    with pytest.raises(InvalidJSONError):
        check_json(body)


@pytest.mark.parametrize("body", [b"{}", b"[1, 2]", b'"x"', b"3", b'{"a": "x\\\\u0000y"}'])
def test_check_json_accepts_storable_json(body: bytes) -> None:
    """Any JSON value is fine, including an escaped backslash before u0000."""
    check_json(body)


@pytest.mark.parametrize("body", [b"[18446744073709551616]", b'{"id": -9223372036854775809}'])
def test_check_json_accepts_what_only_orjson_takes(body: bytes) -> None:
    """Integers beyond 64 bits are JSON (jsonb stores them as numeric): simdjson refuses them,
    and orjson, which judges every body simdjson refuses, takes them."""
    assert not bodies._is_json_fast(body)
    check_json(body)


def test_check_json_stays_right_while_a_parsed_document_is_alive() -> None:
    """simdjson's parser refuses to parse again while a document it returned is alive (a
    RuntimeError); check_json then asks orjson, and still accepts and refuses as it should."""
    kept = bodies._VALIDATOR.parse(b'{"kept": [1, 2]}')
    try:
        assert not bodies._is_json_fast(b"[1]")
        check_json(b'{"a": 1}')
        with pytest.raises(InvalidJSONError):
            check_json(b'{"a": ')
    finally:
        del kept
    assert bodies._is_json_fast(b"[1]")


def test_the_fast_check_accepts_nothing_orjson_refuses() -> None:
    """A differential fuzz: 20,000 seeded mutations of JSON bodies (bytes changed, dropped and
    added, UTF-8 and escapes among them); simdjson accepts none of them that orjson refuses, so
    `check_json` accepts what it did with orjson alone."""
    rng = random.Random(17)
    seeds = [
        b'{"a":[1,2.5e3,-0.1,"x\\u00e9\\n",true,false,null,{"b":{}}],"c":"\xc3\xa9\xe2\x82\xac"}',
        b'[1e5,"\\ud83d\\ude00",[],{},-0,18446744073709551615]',
    ]
    alphabet = [*b'{}[]",:\\ueE+-.0123456789tfnrul \t\n', 0xC3, 0xA9, 0xFF, 0xED, 0xA0, 0x00]
    accepted = 0
    for _ in range(20_000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            at, op = rng.randrange(len(body)), rng.random()
            if op < 0.4:
                body[at] = rng.choice(alphabet)
            elif op < 0.7:
                del body[at]
            else:
                body.insert(at, rng.choice(alphabet))
        if bodies._is_json_fast(bytes(body)):
            accepted += 1
            orjson.loads(bytes(body))  # raises if orjson refuses what simdjson took
    assert 1_000 < accepted < 19_000  # both kinds were tried


def test_check_json_refuses_numbers_postgres_would_write_out_at_length() -> None:
    """An array of 1e-16383 (each read back as 16,385 characters) is refused as invalid_json."""
    body = b"[" + b",".join([b"1e-16383"] * 60) + b"]"
    with pytest.raises(InvalidJSONError, match="exponent"):
        check_json(body)


def test_check_json_refuses_many_modest_exponents_that_add_up() -> None:
    """Exponents under the single-number cap still add up: 1e-999 a thousand times is refused."""
    body = b"[" + b",".join([b"1e-999"] * 1000) + b"]"
    with pytest.raises(InvalidJSONError, match="written out"):
        check_json(body)


@pytest.mark.parametrize(
    "body",
    [
        b"[1e308]",
        b'{"avogadro": 6.02e23, "planck": 6.62607015e-34}',
        b'{"id": "1e99999", "hash": "3e4b1c2d9e8f", "note": "\\"1e-16383"}',
        b"[" + b",".join([b"1.5e-10"] * 5000) + b"]",
        b'{"tiny": 2.2250738585072014e-308, "values": [' + b"0.25," * 500 + b"1]}",
    ],
)
def test_check_json_accepts_ordinary_exponents(body: bytes) -> None:
    """Exponents that render in proportion to the body, and any inside strings, are fine."""
    check_json(body)


def test_check_json_refuses_a_large_body_that_does_not_start_like_json() -> None:
    """A large HTML page (sent as text/plain) is refused without being parsed."""
    body = b"<html>" + b"x" * (2 * PARSE_MAX_BYTES) + b"</html>"
    with pytest.raises(InvalidJSONError, match="not valid JSON"):
        check_json(body)


def test_check_json_of_a_large_body_builds_no_object_tree() -> None:
    """Checking a 10 MiB [{},{},...] body raises a fresh process's peak RSS by under 24 MiB
    (orjson.loads would build 3.5 million dicts, about 300 MiB)."""
    script = textwrap.dedent(
        """
        import re
        from worker.engine.bodies import check_json

        def hwm():
            text = open("/proc/self/status").read()
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", text).group(1)) * 1024

        body = b"[" + b"{}," * (10 * 1024 * 1024 // 3 - 1) + b"{}]"
        before = hwm()
        check_json(body)
        print(hwm() - before)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    grew = int(run.stdout.strip())
    assert grew < 24 * 1024 * 1024, f"peak RSS grew by {grew / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1e5}', True),
        (b'{"a": 1E5}', True),
        (b'{"a": 1.5e-3}', True),
        (b"[7E+10]", True),
        (b'{"id": "3e4b"}', True),  # looks like one: the slow pass blanks strings first
        (b'{"name": "e5", "n": 1e}', False),
        (b'{"a": 1, "e": 2, "b": -5, "c": "E+"}', False),
        (b'{"a": 10-5, "b": 0e}', False),
        (b"", False),
    ],
)
def test_has_exponent_finds_digit_e_digit_as_the_pattern_would(body: bytes, expected: bool) -> None:
    """`has_exponent` finds what the regular expression ``\\d[eE][-+]?\\d`` finds."""
    assert has_exponent(body) is expected
    assert (re.search(rb"\d[eE][-+]?\d", body) is not None) is expected


def test_has_exponent_never_misses_an_exponent_the_pattern_finds() -> None:
    """A superset, never less: every digit-e-digit shape is seen, whatever surrounds it."""
    pieces = [b"1", b"e", b"E", b"+", b"-", b'"', b" ", b"x", b".", b"0"]
    for a in pieces:
        for b in pieces:
            for c in pieces:
                for d in pieces:
                    body = b"[" + a + b + c + d + b"]"
                    if re.search(rb"\d[eE][-+]?\d", body):
                        assert has_exponent(body), body
