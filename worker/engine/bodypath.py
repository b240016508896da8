"""Reading a value out of a JSON body by a path: ``a.b[0].c``.

The same path language as pagination's ``json:PATH`` and ``cursor:PATH:PARAM`` (on branch
``pages``); a source's ``since_path`` is written in it. Once pagination is merged, its reader
replaces this module.
"""

from __future__ import annotations

import re
from typing import Final

PathStep = str | int
Path = tuple[PathStep, ...]

_STEP: Final = re.compile(r"\.?([^.\[\]]+)|\[(-?\d+)\]")


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
