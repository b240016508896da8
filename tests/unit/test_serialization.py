"""JSON job serialisation."""

from __future__ import annotations

import pickle

import orjson
import pytest

from worker.errors import BadJobError
from worker.queue.serialization import RemoteJobError, deserialize, job_deserializer, serialize


def test_job_round_trip() -> None:
    """A job dict survives serialise/deserialise unchanged."""
    job = {"t": 1, "f": "fetch_batch", "a": [], "k": {"urls": ["http://a"]}, "et": 1}
    assert deserialize(serialize(job)) == job
    assert orjson.loads(serialize(job)) == job


def test_exception_results_come_back_as_remote_errors() -> None:
    """A failed job's exception is stored as JSON and raised again as RemoteJobError."""
    exc = RuntimeError("outer")
    exc.__cause__ = ValueError("inner cause")
    data = serialize({"s": False, "r": exc})
    result = deserialize(data)["r"]
    assert isinstance(result, RemoteJobError)
    assert result.error_type == "RuntimeError"
    assert "outer" in str(result)
    assert "inner cause" in str(result)


def test_pickle_is_refused() -> None:
    """Pickle bytes are not JSON: deserialising them raises, and nothing is unpickled."""
    with pytest.raises(orjson.JSONDecodeError):
        deserialize(pickle.dumps({"f": "fetch_batch"}))


GOOD = {"t": None, "f": "fetch_batch", "a": [], "k": {"urls": ["http://a"]}, "et": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"f": ["fetch_batch"]}, "'f' must be a function name"),
        ({"f": {"x": 1}}, "'f' must be a function name"),
        ({"f": ""}, "'f' must be a function name"),
        ({"t": "1"}, "'t' must be null"),
        ({"t": {"n": 1}}, "'t' must be null"),
        ({"t": -1}, "'t' must be null"),
        ({"et": None}, "'et' must be the enqueue time"),
        ({"et": "1764072000000"}, "'et' must be the enqueue time"),
        ({"et": 1e300}, "'et' must be the enqueue time"),
        ({"et": 2**62}, "'et' must be the enqueue time"),
        ({"et": True}, "'et' must be the enqueue time"),
        ({"a": {"x": 1}}, "'a' must be a list"),
        ({"k": ["urls"]}, "'k' must be an object"),
        ({"zz": 1}, "unknown key\\(s\\) 'zz'"),
    ],
)
def test_the_worker_refuses_malformed_envelopes_saying_why(change: dict, message: str) -> None:
    """Every field of an arq job is checked for type and range before arq uses it."""
    with pytest.raises(BadJobError, match=message):
        job_deserializer(1 << 20)(orjson.dumps({**GOOD, **change}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b'"fetch_batch"', "must be a JSON object"),
        (b'{"f": "fetch_batch"}', "missing key\\(s\\) 'a', 'et', 'k'"),
        (b"\x80\x04not json", "not JSON"),
        (b'{"k": "' + b"x" * 2000 + b'"}', "over the limit of 1024"),
    ],
)
def test_the_worker_refuses_what_is_not_an_envelope(data: bytes, message: str) -> None:
    """Non-objects, missing keys, non-JSON (pickle) and oversized jobs are refused plainly."""
    with pytest.raises(BadJobError, match=message):
        job_deserializer(1024)(data)


def test_an_enqueue_time_try_count_is_ignored() -> None:
    """A caller's ``t`` never decides a job's fate: it is read as null."""
    job = job_deserializer(1 << 20)(orjson.dumps({**GOOD, "t": 21}))
    assert job["t"] is None
    assert job["k"] == GOOD["k"]
