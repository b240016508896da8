"""Logging: key=value lines, bound job ids, redacted credentials."""

from __future__ import annotations

import logging

import orjson

from worker.logs import JSONFormatter, KeyValueFormatter, bound_job, redact


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_redact_hides_userinfo_in_urls_and_dsns() -> None:
    """user:password@ is replaced in any URL-like text."""
    text = "get http://bob:s3cret@api.example/x and postgresql://app:pw@db/h"
    out = redact(text)
    assert "s3cret" not in out
    assert ":pw@" not in out
    assert "http://***@api.example/x" in out


def test_key_value_lines_carry_the_bound_job_id() -> None:
    """Inside bound_job every line carries job_id, plus the event's fields."""
    with bound_job("job-1"):
        line = KeyValueFormatter().format(_record("job.done", documents=3))
    assert " INFO job.done job_id=job-1 documents=3" in line


def test_json_lines_are_redacted() -> None:
    """The JSON format redacts credentials in fields too."""
    line = JSONFormatter().format(_record("fetch.x", url="https://u:p@h/"))
    data = orjson.loads(line)
    assert data["event"] == "fetch.x"
    assert data["url"] == "https://***@h/"


def test_redact_hides_token_like_query_parameters() -> None:
    """api_key, access_token, sig and friends lose their values; other parameters stay."""
    out = redact("GET https://h/p?page=2&api_key=abc123&access_token=xyz&X-Amz-Signature=f00d#frag")
    assert "abc123" not in out
    assert "xyz" not in out
    assert "f00d" not in out
    assert "page=2" in out
    assert "api_key=***" in out
