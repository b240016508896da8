"""What is fetched: a `Request` (URL, method, JSON body, extra headers), the one definition of a
request's identity and of the header rules a job must keep.

An outcome's identity is (job id, method, URL, body hash): a GET without a body is identified by
its URL alone, as every outcome was before requests had methods, so its keys are unchanged. A
body is encoded once, canonically (sorted keys, compact, UTF-8), and that encoding is what is
sent, hashed and stored, so the same JSON value always has the same hash however it was written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

METHODS: Final = ("GET", "POST", "PUT", "PATCH")
BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})

# (URL, method, body hash or None): what makes an outcome one outcome within a job.
RequestKey = tuple[str, str, bytes | None]

MAX_HEADERS: Final = 32
MAX_HEADER_NAME: Final = 64
MAX_HEADER_VALUE: Final = 2048
# Extra headers travel in the job and go on the wire with every request of it: both are bounded.
MAX_HEADER_BYTES: Final = 8 * 1024

# Headers a job may not set, and why (said in the job's refusal).
_CREDENTIAL_WHY: Final = (
    "it carries a secret, and a job's fields are stored in Redis; name a credential profile "
    "in 'auth' instead"
)
_HOP_WHY: Final = "it is a hop-by-hop header, which the connection sets, not the job"
_FRAMING_WHY: Final = "harvester sets it from the URL and the body"
REFUSED_HEADERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "authorization": _CREDENTIAL_WHY,
        "proxy-authorization": _CREDENTIAL_WHY,
        "cookie": _CREDENTIAL_WHY,
        "connection": _HOP_WHY,
        "keep-alive": _HOP_WHY,
        "proxy-connection": _HOP_WHY,
        "te": _HOP_WHY,
        "trailer": _HOP_WHY,
        "transfer-encoding": _HOP_WHY,
        "upgrade": _HOP_WHY,
        "host": _FRAMING_WHY,
        "content-length": _FRAMING_WHY,
    }
)
# RFC 9110's token: the characters a header name may hold.
HEADER_NAME: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class Body:
    """A JSON request body, encoded once. Two bodies are equal when their hashes are."""

    encoded: bytes = field(compare=False, repr=False)
    digest: bytes

    @classmethod
    def of(cls, value: object) -> Body:
        """The body holding the JSON ``value``; `ValueError` if it cannot be sent and stored."""
        encoded = canonical_json(value)
        return cls(encoded, hashlib.sha256(encoded).digest())


def canonical_json(value: object) -> bytes:
    """``value`` as canonical JSON bytes (sorted keys, compact, UTF-8), or `ValueError` saying
    why it has none: not JSON, a NUL character (Postgres jsonb cannot hold it), too deep."""
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except RecursionError:
        raise ValueError("is nested too deeply") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"is not JSON ({exc})") from None
    if "\\u0000" in text and _holds_nul(value):
        raise ValueError("contains a NUL character (\\u0000), which Postgres cannot store")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate, which is not UTF-8") from None


def _holds_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class Request:
    """One request of a batch. Equal requests (same URL, method and body) are one outcome;
    ``headers`` (extra, non-secret, checked by `header_problems`) do not change identity."""

    url: str
    method: str = "GET"
    body: Body | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: NO_HEADERS, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.body is not None and self.method not in BODY_METHODS:
            raise ValueError(f"a {self.method} request has no body: use POST, PUT or PATCH")

    @property
    def plain(self) -> bool:
        """A GET without a body: identified by its URL alone, as before methods existed."""
        return self.body is None and self.method == "GET"

    @property
    def body_hash(self) -> bytes | None:
        """The SHA-256 of the body's canonical encoding; None without a body."""
        return None if self.body is None else self.body.digest

    def key(self, url: str | None = None) -> RequestKey:
        """This request's identity, with ``url`` (its stored form) in place of its own."""
        return (self.url if url is None else url, self.method, self.body_hash)


def header_problems(headers: Mapping[str, str]) -> list[str]:
    """What is wrong with ``headers`` as a job's extra headers (names case-insensitive)."""
    problems: list[str] = []
    if len(headers) > MAX_HEADERS:
        problems.append(f"has {len(headers)} headers, over the limit of {MAX_HEADERS}")
    size = sum(len(k) + len(v.encode("utf-8", "replace")) + 4 for k, v in headers.items())
    if size > MAX_HEADER_BYTES:
        problems.append(f"holds {size} bytes of headers, over the limit of {MAX_HEADER_BYTES}")
    for name, value in headers.items():
        problem = _header_problem(name, value)
        if problem is not None:
            problems.append(problem)
    return problems


def _header_problem(name: str, value: str) -> str | None:
    shown = repr(name[:MAX_HEADER_NAME])
    if len(name) > MAX_HEADER_NAME or not HEADER_NAME.fullmatch(name):
        return f"header name {shown} is not a header name (letters, digits, -, at most 64)"
    why = REFUSED_HEADERS.get(name.lower())
    if why is not None:
        return f"header {shown} is refused: {why}"
    if len(value) > MAX_HEADER_VALUE:
        return f"header {shown} has a value longer than {MAX_HEADER_VALUE} characters"
    if not value.isprintable():
        return f"header {shown} has a control character (CR, LF, NUL...) in its value"
    return None


def merged_headers(base: Mapping[str, str], extra: Mapping[str, str]) -> Mapping[str, str]:
    """``base`` with ``extra`` over it, names compared case-insensitively (``base`` itself when
    ``extra`` is empty, so a batch's requests share one mapping)."""
    if not extra:
        return base
    if not base:
        return extra
    overridden = {k.lower() for k in extra}
    return {**{k: v for k, v in base.items() if k.lower() not in overridden}, **extra}
