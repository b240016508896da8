"""JSON job and result serialisation for arq, so any language can enqueue and nothing is unpickled.

Exceptions in results are written as ``{"__error__": "<type>", "message": "..."}`` and read
back as `RemoteJobError`, so a Python caller's ``await job.result()`` raises a real exception.
"""

from __future__ import annotations

from typing import Any

import orjson


class RemoteJobError(Exception):
    """A job failed in the worker; ``error_type`` names the exception it raised there."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}" if message else error_type)
        self.error_type = error_type
        self.message = message


def _default(obj: object) -> object:
    if isinstance(obj, BaseException):
        message = str(obj)
        if obj.__cause__ is not None:
            # arq wraps the real reason (e.g. "payload is not JSON") as the cause.
            message = f"{message}: {obj.__cause__}"
        return {"__error__": type(obj).__name__, "message": message}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def serialize(obj: Any) -> bytes:
    """Serialise a job or a job result to JSON bytes."""
    return orjson.dumps(obj, default=_default)


def deserialize(data: bytes) -> Any:
    """Parse JSON bytes; a stored exception comes back as `RemoteJobError`."""
    value = orjson.loads(data)
    if isinstance(value, dict):
        result = value.get("r")
        if isinstance(result, dict) and "__error__" in result:
            value["r"] = RemoteJobError(str(result["__error__"]), str(result.get("message", "")))
    return value
