"""Paginated walks: where a page says its next page is, and when a walk stops. Pure, no I/O.

A job's ``paginate`` names one of three styles (`PageSpec`):

- ``link``: the response's ``Link: <...>; rel="next"`` header (RFC 8288), read by `next_link`;
- ``json``: a URL in the body, at a `parse_path` path such as ``links.next`` or ``data[-1].url``;
- ``cursor``: a value in the body put into one query parameter of the first page's URL.

A `Walk` is told each page's ``Link`` headers and body and answers the next URL, or None when
the walk is over (no next page, an empty cursor, ``max_pages`` reached). A next URL on another
origin (unless the job allows it) is a `PaginationError`; a URL the walk has fetched already is
a `PaginationLoopError`. Both become a failure row for the page that was not fetched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import orjson
from yarl import URL

from worker.errors import PaginationError, PaginationLoopError

Style = Literal["link", "json", "cursor"]
PathStep = str | int
Path = tuple[PathStep, ...]

DEFAULT_MAX_PAGES: Final = 100
# A next URL or cursor is read from page bodies up to this size. orjson builds every value of a
# body as a Python object (a 4 MiB [{},{},...] is ~120 MiB for a moment); a parse runs in the
# event loop and its result is dropped before the next await, so one exists per process at most.
PAGE_PARSE_MAX_BYTES: Final = 4 * 1024 * 1024

# -- the path language: dotted keys and [n] indexes ----------------------------------------------

_STEP: Final = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]")
# The same language as a JSON Schema pattern, for the OpenAPI document.
PATH_PATTERN: Final = r"^([^.\[\]]+|\[-?\d+\])(\.[^.\[\]]+|\[-?\d+\])*$"


def parse_path(text: str) -> Path:
    """The steps of a body path: ``a.b[0].c`` is ``("a", "b", 0, "c")``.

    Keys are any characters but ``.``, ``[`` and ``]``; ``[n]`` indexes a list (``[-1]`` is the
    last item). Raises `ValueError` saying what is wrong with a path that is not one.
    """
    if not text:
        raise ValueError("it is empty")
    if text.startswith(".") or text.endswith("."):
        raise ValueError(f"{text!r} starts or ends with a dot")
    steps: list[PathStep] = []
    at = 0
    while at < len(text):
        match = _STEP.match(text, at)
        # A key must follow a dot, unless it opens the path.
        if match is None or (match.group(1) and at > 0 and text[at] != "."):
            raise ValueError(f"{text!r} cannot be read at character {at + 1}")
        key, index = match.groups()
        steps.append(key if key is not None else int(index))
        at = match.end()
    return tuple(steps)


def lookup(value: object, path: Path) -> object:
    """The value at ``path`` in a parsed JSON ``value``, or None where the path leads nowhere."""
    for step in path:
        if isinstance(step, str):
            if not isinstance(value, dict):
                return None
            value = value.get(step)
        else:
            if not isinstance(value, list) or not -len(value) <= step < len(value):
                return None
            value = value[step]
    return value


# -- RFC 8288 Link headers -----------------------------------------------------------------------

# One link-value: <target> and its parameters (a quoted value may hold ; and ,).
_LINK: Final = re.compile(r'<([^>]*)>((?:\s*;\s*[^;,="]+(?:=\s*(?:"(?:[^"\\]|\\.)*"|[^;,"]*))?)*)')
# The usual header, GitHub's form: the first link-value is the next page, with rel alone.
_PLAIN_NEXT: Final = re.compile(r'\s*<([^>]*)>\s*;\s*rel=(?:"next"|next)\s*(?:,|$)')
_PARAM: Final = re.compile(r';\s*([^;,="\s]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^;,"]*)))?')
# The parameters of that form as APIs write them, read with str methods before `_PLAIN_NEXT`.
_NEXT_PARAMS: Final = ('; rel="next"', "; rel=next")


def next_link(headers: Sequence[str]) -> str | None:
    """The target of the first link with relation ``next`` in ``Link`` header values, or None.

    Lean on purpose (it runs once per page): a header without "next" in it is not parsed, and
    only the ``rel`` parameter is read (its first occurrence, as RFC 8288 says; relation types
    are compared case-insensitively and a ``rel`` may list several).
    """
    for header in headers:
        target = _written_next(header)
        if target is not None:
            return target
        plain = _PLAIN_NEXT.match(header)
        if plain is not None:
            return plain.group(1).strip()
        if "next" not in header and "NEXT" not in header.upper():
            continue
        for link in _LINK.finditer(header):
            if _has_next(link.group(2)):
                return link.group(1).strip()
    return None


def _written_next(header: str) -> str | None:
    """The target when ``header`` starts ``<target>; rel="next"`` as APIs write it (then the
    end or a comma), by str methods: a regular expression costs more, once a page. None for
    any other form, which `_PLAIN_NEXT` and the full parse read."""
    if not header.startswith("<"):
        return None
    target, _, rest = header[1:].partition(">")
    for params in _NEXT_PARAMS:
        if rest.startswith(params):
            after = rest[len(params) :].lstrip()
            return target.strip() if not after or after.startswith(",") else None
    return None


def _has_next(params: str) -> bool:
    for name, quoted, token in _PARAM.findall(params):
        if name.lower() == "rel":
            value = quoted if quoted or not token else token
            return "next" in value.lower().split()
    return False


# -- the walk -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageSpec:
    """How a request's pages are walked: a job's ``paginate``, validated."""

    style: Style
    path: Path = ()
    param: str = ""
    max_pages: int = DEFAULT_MAX_PAGES
    cross_origin: bool = False


@dataclass(frozen=True, slots=True)
class Resume:
    """Where an interrupted walk goes on: the ``page`` to fetch next, its ``url``, and the page
    URLs it fetched already (``seen``, for loops)."""

    page: int
    url: str
    seen: frozenset[str] = frozenset()


class Walk:
    """One request's walk through its pages: feed it each page, it answers the next URL.

    ``page`` is the number of the page last fed (1-based) and ``url`` its URL; before any
    page is fed they are the first page's.
    """

    __slots__ = ("_clean", "_first", "_origin", "_prefix", "_seen", "page", "spec", "url")

    def __init__(
        self,
        spec: PageSpec,
        first_url: str,
        resume: Resume | None = None,
        clean: Callable[[str], str] | None = None,
    ) -> None:
        """``clean`` takes what must not be kept out of a next URL (a secret the API echoed)
        before the URL is judged, compared with the pages seen, stored or followed."""
        self.spec = spec
        self._clean = clean
        self._first = URL(first_url.strip())  # as the fetcher reads it
        self._origin = _origin(self._first)
        # An absolute next URL that starts with this needs no parsing to be on the same origin.
        self._prefix = f"{self._first.origin()}/"
        self._seen = {first_url, str(self._first.with_fragment(None))}
        self.url, self.page = first_url, 1
        if resume is not None:
            self.url, self.page = resume.url, resume.page
            self._seen.update(resume.seen)
            self._seen.add(resume.url)

    def next_url(self, links: Sequence[str], body: bytes) -> str | None:
        """The URL of the page after the current one, or None when the walk is over; moves the
        walk on to it. Raises `PaginationError` (kind ``pagination``) or
        `PaginationLoopError` (kind ``pagination_loop``)."""
        if self.page >= self.spec.max_pages:
            return None
        target = self._target(links, body)
        if target is None:
            return None
        nxt = self._resolve(target)
        if nxt in self._seen:
            raise PaginationLoopError(
                f"page {self.page} leads back to {nxt}, fetched already", target=nxt
            )
        self._seen.add(nxt)
        self.page += 1
        self.url = nxt
        return nxt

    def _target(self, links: Sequence[str], body: bytes) -> str | URL | None:
        spec = self.spec
        if spec.style == "link":
            return next_link(links) or None
        value = lookup(_parse(body), spec.path)
        if value is None or value == "":
            return None
        if spec.style == "json":
            if not isinstance(value, str):
                raise PaginationError(
                    f"the next URL at {render_path(spec.path)} is {_json_type(value)}, not a string"
                )
            return value
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise PaginationError(
                f"the cursor at {render_path(spec.path)} is {_json_type(value)}, "
                "not a string or an integer"
            )
        return self._first.update_query({spec.param: str(value)})

    def _resolve(self, target: str | URL) -> str:
        """The next page's URL, without fragment, judged; as given when it plainly is one on
        the first page's origin (the common case, which costs no parsing)."""
        if isinstance(target, str):
            if self._clean is not None:
                target = self._clean(target)
            if target.startswith(self._prefix) and _plain(target):
                return target
            target = _url(target)
        # Most APIs give absolute links: joining those would only cost a reparse.
        nxt = target if target.scheme and target.absolute else URL(self.url).join(target)
        nxt = nxt.with_fragment(None)
        if nxt.scheme not in ("http", "https"):
            raise PaginationError(
                f"the next page's scheme {nxt.scheme!r} is not http or https", target=str(nxt)
            )
        if not self.spec.cross_origin and _origin(nxt) != self._origin:
            raise PaginationError(
                f"the next page {nxt.scheme}://{nxt.host_port_subcomponent} is on another "
                "origin than the first page (set paginate.cross_origin to follow it)",
                target=str(nxt),
            )
        return str(nxt)


def _plain(url: str) -> bool:
    """Whether ``url`` has nothing to normalise away: ASCII, no fragment, no whitespace or
    control characters (printable ASCII is 0x20 to 0x7e, so only the space is left to rule
    out). Cheaper than a regular expression, once a page."""
    return url.isascii() and url.isprintable() and " " not in url and "#" not in url


def render_path(path: Path) -> str:
    """A path as written: ``("a", 0, "b")`` is ``a[0].b``."""
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _origin(url: URL) -> tuple[str, str, int | None]:
    return (url.scheme, (url.host or "").lower(), url.port)


def _url(text: str) -> URL:
    try:
        return URL(text)
    except (ValueError, TypeError) as exc:
        raise PaginationError(f"the next page's URL cannot be read: {exc}") from exc


def _parse(body: bytes) -> object:
    if len(body) > PAGE_PARSE_MAX_BYTES:
        raise PaginationError(
            f"the page is {len(body)} bytes; a next URL or cursor is read from pages up to "
            f"{PAGE_PARSE_MAX_BYTES} bytes"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PaginationError(f"the page is not JSON, so no next page can be read: {exc}") from exc


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", dict: "an object"}
    return names.get(type(value), "a list" if isinstance(value, list) else "a value")
