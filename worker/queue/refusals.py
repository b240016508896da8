"""Pydantic's validation errors said plainly: one sentence per problem with a job, naming the
field as the caller wrote it (``requests[2].headers``), never in pydantic's words."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from worker.queue.shapes import METHODS, Cursor, Paginate, Records, RequestSpec

_TYPE_WORDS: Final = {
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "int_type": "must be an integer",
}


def field_names(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` as a job spells them (``json``, not ``json_body``)."""
    return [f.alias or name for name, f in model.model_fields.items()]


def _path(loc: Sequence[int | str]) -> str:
    """A field's place as a caller writes it: ``requests[2].headers``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "payload"


def describe(
    errors: Sequence[ErrorDetails], data: Mapping[str, object], model: type[BaseModel]
) -> list[str]:
    """One plain sentence per problem pydantic found in ``data`` (a job's keyword arguments,
    validated as ``model``)."""
    problems: list[str] = []
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    top = sorted(str(e["loc"][0]) for e in unknown if len(e["loc"]) == 1)
    if top:
        allowed = ", ".join(field_names(model))
        problems.append(f"unknown field(s) {', '.join(map(repr, top))}; allowed: {allowed}")
    for e in unknown:
        if len(e["loc"]) > 1:
            problems.append(
                f"'{_path(e['loc'][:-1])}' has an unknown field {str(e['loc'][-1])!r}; allowed: "
                + ", ".join(field_names(_model_at(e["loc"][:-1])))
            )
    items = [e for e in errors if e["loc"][:1] == ("urls",) and e["type"] == "string_type"]
    if items:
        first = items[0]
        problems.append(
            f"'urls' must contain only strings: {len(items)} item(s) are not, "
            f"the first at index {first['loc'][1]} is {type(first['input']).__name__}"
        )
    for e in errors:
        if e["type"] != "extra_forbidden" and e not in items:
            problems.append(_sentence(e, data))
    return problems


def _model_at(loc: Sequence[int | str]) -> type[BaseModel]:
    """The model of the object at ``loc`` (a nested one: a request, paginate, its cursor)."""
    if loc[:1] == ("paginate",):
        return Cursor if len(loc) > 1 else Paginate
    if loc[:1] == ("records",):
        return Records
    return RequestSpec


def _sentence(error: ErrorDetails, data: Mapping[str, object]) -> str:
    field = _path(error["loc"])
    kind = error["type"]
    if kind == "missing":
        return f"'{field}' is required"
    if kind in ("too_short", "string_too_short"):
        return f"'{field}' is empty"
    if kind == "string_too_long":
        return f"'{field}' is longer than {error.get('ctx', {}).get('max_length')} characters"
    if kind == "literal_error" and not field.startswith("paginate"):
        return f"'{field}' must be one of {', '.join(METHODS)}, got {error['input']!r}"
    if kind == "literal_error":
        return f"'{field}' must be {error.get('ctx', {}).get('expected')}, got {error['input']!r}"
    if kind == "greater_than_equal":
        return (
            f"'{field}' must be at least {error.get('ctx', {}).get('ge')}, got {error['input']!r}"
        )
    if kind in _TYPE_WORDS:
        words = _TYPE_WORDS[kind]
        if field == "urls" and kind == "list_type":
            words = "must be a list of strings"
        elif field == "source" and kind == "string_type":
            words = "must be a string or null"
        return f"'{field}' {words}, got {type(error['input']).__name__}"
    if kind == "value_error":
        said = error["msg"].removeprefix("Value error, ")
        # A request's own validators do not know where the request is: say it for them.
        return f"'{field}': {said}" if len(error["loc"]) > 1 else said
    return f"'{field}': {error['msg']}"
