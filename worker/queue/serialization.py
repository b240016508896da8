"""JSON job and result serialisation for arq, so any language can enqueue and nothing is unpickled.

Exceptions in results are written as ``{"__error__": "<type>", "message": "..."}`` and read
back as `RemoteJobError`, so a Python caller's ``await job.result()`` raises a real exception.

The worker reads jobs with `job_deserializer`, which checks the whole arq envelope before arq
touches it: a job written to Redis by hand with ``"f": []`` or ``"et": "soon"`` would otherwise
raise inside arq's worker loop, outside its error handling, and stop the process (and every
worker that takes the job after it). A bad envelope fails that job alone, with a message saying
what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from worker.errors import BadJobError


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


# The keys of an arq job as arq 0.26-0.28 writes it, and what each must hold.
ENVELOPE_KEYS: Final = frozenset({"t", "f", "a", "k", "et"})
MAX_FUNCTION_NAME: Final = 200
# Enqueue times arq can turn into a datetime: 1970 to the year 9999, in milliseconds.
MAX_ENQUEUE_TIME_MS: Final = 253_402_300_799_999


def _envelope_problems(value: object) -> list[str]:
    if not isinstance(value, dict):
        return [f"a job must be a JSON object, got {type(value).__name__}"]
    problems = []
    missing = sorted(ENVELOPE_KEYS - value.keys() - {"t"})
    if missing:
        problems.append(f"missing key(s) {', '.join(map(repr, missing))}")
    unknown = sorted(value.keys() - ENVELOPE_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
    f = value.get("f", "")
    if not isinstance(f, str) or not f or len(f) > MAX_FUNCTION_NAME or not f.isprintable():
        problems.append("'f' must be a function name (a short printable string)")
    if not isinstance(value.get("a", []), list):
        problems.append("'a' must be a list of positional arguments")
    if not isinstance(value.get("k", {}), dict):
        problems.append("'k' must be an object of keyword arguments")
    t = value.get("t")
    if t is not None and (type(t) is not int or t < 0):
        problems.append("'t' must be null (or a non-negative integer, which is ignored)")
    et = value.get("et", 0)
    if type(et) is not int or not 0 <= et <= MAX_ENQUEUE_TIME_MS:
        problems.append("'et' must be the enqueue time in Unix milliseconds (an integer)")
    return problems


def job_deserializer(max_bytes: int) -> Callable[[bytes], dict[str, Any]]:
    """The worker's job deserializer: JSON only, at most ``max_bytes``, a valid arq envelope.

    Raises `BadJobError` saying what was wrong (arq then fails that job alone as "unable to
    deserialize job: ..."). An enqueue-time try count ``t`` is ignored: how many times a job has
    run is arq's own count in Redis, never a number a caller sends.
    """

    def load(data: bytes) -> dict[str, Any]:
        if len(data) > max_bytes:
            raise BadJobError(
                f"job payload is {len(data)} bytes, over the limit of {max_bytes} "
                "(HARVESTER_MAX_JOB_BYTES)"
            )
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise BadJobError(f"job is not JSON ({exc}); harvester never unpickles") from None
        problems = _envelope_problems(value)
        if problems:
            raise BadJobError("invalid arq job: " + "; ".join(problems))
        assert isinstance(value, dict)
        value["t"] = None
        return value

    return load
