"""The examples in the README and docs/, read from the Markdown so that tests run them as written.

An example is a fenced code block preceded by a ``<!-- example: NAME -->`` line; `example`
returns its text. Examples talk to ``api.example.com``; `localised` points them at a local
upstream instead, which is the one change a test makes.
"""

from __future__ import annotations

import re
from pathlib import Path

_EXAMPLE = re.compile(
    r"<!-- example: (?P<name>[\w.-]+)[^>]*-->\n```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S
)


def examples(path: Path) -> dict[str, tuple[str, str]]:
    """Every named example of ``path``: name -> (language, code)."""
    text = path.read_text(encoding="utf-8")
    return {m["name"]: (m["lang"], m["code"]) for m in _EXAMPLE.finditer(text)}


def example(path: Path, name: str) -> str:
    """The code of the example ``name`` in ``path`` (KeyError if there is none)."""
    return examples(path)[name][1]


def localised(code: str, base: str) -> str:
    """``code`` with https://api.example.com pointed at ``base`` (a local upstream's path)."""
    return code.replace("https://api.example.com", base)
