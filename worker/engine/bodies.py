"""What a fetched body must be to land: JSON that Postgres' jsonb takes and reads back at a size
in proportion, and failure details fit to store and show. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

import orjson
import simdjson

from worker.errors import InvalidJSONError
from worker.logs import redact

# Postgres jsonb refuses the NUL escape; an odd run of backslashes before "u0000" is a real one.
_NUL_ESCAPE: Final = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
# Bodies up to this size are parsed here. A larger one is not: parsing builds every value as a
# Python object (a 10 MiB [{},{},...] is 3.5 million dicts, ~300 MiB), so Postgres' jsonb input
# validates it as it lands instead, and a body it refuses becomes an invalid_json failure there.
PARSE_MAX_BYTES: Final = 256 * 1024
# simdjson validates a body without building it: 13 µs for the bench's 16 KB body where orjson,
# which builds every value as a Python object, takes 70 (1.5 against 4.4 at 1 KB). It accepts
# nothing orjson refuses except a leading UTF-8 byte order mark (a differential fuzz of 300,000
# mutated bodies found no other case), and refuses integers beyond 64 bits, which orjson and jsonb
# take; so a body it refuses, or one with a BOM, is judged by orjson as before, and what
# `check_json` accepts is what it accepted with orjson alone. One parser per process: reused, it
# keeps its buffers (about 15 times the largest body it has seen: under 4 MiB, as it takes none
# over PARSE_MAX_BYTES), and no document it returns is kept, so it is free for the next body.
_VALIDATOR: Final = simdjson.Parser(max_capacity=PARSE_MAX_BYTES)
_BOM: Final = b"\xef\xbb\xbf"
# A JSON text starts with a value, after optional whitespace.
_JSON_START: Final = re.compile(rb"[ \t\r\n]*[\[{\"\-0-9tfn]")
# Postgres numeric writes every digit of a number out: 1e-16383 (8 bytes) reads back as 16,385
# characters. A body is refused when an exponent exceeds MAX_EXPONENT, or when what its
# exponents add on reading (at most |exponent| - len(exponent) characters each) exceeds its
# own length plus EXPONENT_SLACK, so a row reads back at most about 2.5 times its size
# (jsonb output also adds a space after each comma and colon).
MAX_EXPONENT: Final = 1000
EXPONENT_SLACK: Final = 1024
# For `has_exponent`: every digit read as 0 and E as e (signs are deleted).
_EXPONENT_SHAPES: Final = bytes.maketrans(b"123456789E", b"000000000e")
_EXPONENT: Final = re.compile(rb"\d[eE]([-+]?\d+)")
# A JSON string; the closing quote is optional so that an unterminated one is consumed in one
# linear pass instead of being retried from every escaped quote inside it.
_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)


def clean_detail(text: str, limit: int = 500) -> str:
    """A failure detail safe to store and show: credentials redacted, no NUL, no lone
    surrogates (aiohttp keeps undecodable bytes of a reason phrase as surrogates), bounded."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return redact(text)[:limit]


def check_json(body: bytes) -> None:
    """Raise `InvalidJSONError` unless ``body`` is JSON that Postgres' jsonb will accept and
    read back at a size in proportion to the body.

    Bodies over `PARSE_MAX_BYTES` are not parsed (see there): only their first character is
    checked, and Postgres refuses the rest of what is not JSON when the body lands.
    """
    if len(body) <= PARSE_MAX_BYTES:
        if not _is_json_fast(body):
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidJSONError(f"body is not valid JSON: {exc}") from exc
    elif not _JSON_START.match(body):
        raise InvalidJSONError(f"body is not valid JSON: it starts with {body[:16]!r}")
    # A lone backslash is one memchr: most bodies have none, and skip the slower searches.
    if b"\\" in body and b"\\u0000" in body and _NUL_ESCAPE.search(body):
        raise InvalidJSONError("body contains \\u0000, which Postgres jsonb cannot store")
    if has_exponent(body):
        _check_exponents(body)


def _is_json_fast(body: bytes) -> bool:
    """True when simdjson takes ``body``; False when orjson must judge it (see `_VALIDATOR`)."""
    if body.startswith(_BOM):
        return False
    try:
        _VALIDATOR.parse(body)  # the document it returns is dropped at once
    except Exception:  # noqa: BLE001 - any refusal or trouble of simdjson's: orjson judges
        # (ValueError: syntax, UTF-8, capacity; RuntimeError: depth, 64-bit overflow, and the
        # parser still holding a document; a release mapping errors anew must not fail bodies)
        return False
    return True


def has_exponent(body: bytes) -> bool:
    """Whether a digit, ``e`` or ``E``, an optional sign and a digit follow each other anywhere
    in ``body`` (in a number, or in a string that looks like one); also true of a few things no
    number is (a sign before the ``e``), which only costs the exact pass. Two C passes: a
    regular expression search for the same took a twelfth of a worker's CPU at 1 KB."""
    return b"0e0" in body.translate(_EXPONENT_SHAPES, b"+-")


def _check_exponents(body: bytes) -> None:
    """Refuse numbers that Postgres would write out out of proportion to the body (see
    `MAX_EXPONENT`). Only bodies with a digit-e-digit somewhere pay for this pass."""
    growth = 0
    # Strings can hold anything that looks like a number ("3e4b..." ids): blank them first.
    for match in _EXPONENT.finditer(_STRING.sub(b'""', body)):
        text = match.group(1)
        exponent = abs(int(text))
        if exponent > MAX_EXPONENT:
            raise InvalidJSONError(
                f"body has a number with exponent {text.decode()}; exponents beyond "
                f"{MAX_EXPONENT} are refused, as Postgres would store every digit"
            )
        growth += exponent - len(text)
    if growth > len(body) + EXPONENT_SLACK:
        raise InvalidJSONError(
            f"body's numbers would be written out in {growth} more characters than its "
            f"{len(body)} bytes (Postgres stores every digit of an exponent)"
        )
