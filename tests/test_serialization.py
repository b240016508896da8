"""JSON job serialisation."""

from __future__ import annotations

import pickle

import orjson
import pytest

from worker.serialization import RemoteJobError, deserialize, serialize


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
