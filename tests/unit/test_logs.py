"""Logging: key=value lines, bound job ids, redacted credentials."""

from __future__ import annotations

import logging

import orjson
import pytest

from worker.logs import (
    ArqLineFilter,
    JSONFormatter,
    KeyValueFormatter,
    bound_job,
    redact,
    register_secret,
    secrets,
)


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


def test_redact_hides_passwords_holding_at_signs_and_more_token_parameters() -> None:
    """A password with "@" is hidden whole; jwt, code, sid and fragment tokens lose values."""
    out = redact(
        "http://dave:p@ss@word@h/x http://h/cb?code=c0de&state=ok&jwt=j.w.t&sid=5e55#id_token=i"
    )
    for secret in ("p@ss", "word@h", "c0de", "j.w.t", "5e55", "=i"):
        assert secret not in out, (secret, out)
    assert "http://***@h/x" in out
    assert "state=ok" in out


def test_lines_cannot_be_forged_or_drive_a_terminal() -> None:
    """Newlines, ESC, C1 controls and bidi overrides in messages and fields are escaped."""
    evil = "x\n2026-01-01T00:00:00Z INFO job.done forged=1 \x1b]8;;http://e\x07 \x9b2J \u202e"
    line = KeyValueFormatter().format(_record("job.x", source=evil, job=evil))
    assert "\n" not in line
    for raw in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert raw not in line
    assert "\\x1b" in line
    data = orjson.loads(JSONFormatter().format(_record("e", source=evil)))
    assert "\x1b" not in data["source"]
    assert "\u202e" not in data["source"]


def test_arqs_job_start_line_is_dropped_and_bad_jobs_lose_their_traceback() -> None:
    """arq's start line (arguments cut before redaction) never reaches the log; a malformed
    job is one warning line with its reason."""
    start = logging.LogRecord(
        "arq.worker",
        logging.INFO,
        __file__,
        1,
        "%6.2fs → %s(%s)%s",
        (0.1, "j:fetch_batch", "urls=['http://u:longpass", ""),
        None,
    )
    assert not ArqLineFilter().filter(start)
    failure = RuntimeError("unable to deserialize job")
    failure.__cause__ = ValueError("'f' must be a function name")
    bad = logging.LogRecord(
        "arq.worker",
        logging.ERROR,
        __file__,
        1,
        "deserializing job %s failed",
        ("j1",),
        (RuntimeError, failure, None),
    )
    assert ArqLineFilter().filter(bad)
    line = KeyValueFormatter().format(bad)
    assert "Traceback" not in line
    assert "job.invalid" in line
    assert "job_id=j1" in line
    assert "'f' must be a function name" in line


def test_registered_secrets_are_redacted_everywhere_a_line_can_carry_them() -> None:
    """A loaded secret is replaced in the message, in string fields, in nested values, in JSON
    lines and in tracebacks; a secret containing another is hidden whole."""
    register_secret("sekr1t-unit-abc")
    register_secret("sekr1t-unit-abc-longer")
    record = _record("upstream said sekr1t-unit-abc-longer", detail="x sekr1t-unit-abc y")
    record.__dict__["nested"] = {"echo": ["sekr1t-unit-abc"]}
    error = ValueError("boom sekr1t-unit-abc")
    record.exc_info = (ValueError, error, None)
    for formatter in (KeyValueFormatter(), JSONFormatter()):
        line = formatter.format(record)
        assert "sekr1t" not in line, line
        assert "[redacted]" in line
    assert redact("a sekr1t-unit-abc-longer b") == "a [redacted] b"


def test_the_scrubber_can_be_turned_off_only_for_the_test_that_proves_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``secrets.enabled`` off the value passes: the switch the teeth test uses."""
    register_secret("sekr1t-unit-off")
    monkeypatch.setattr(secrets, "enabled", False)
    assert redact("x sekr1t-unit-off") == "x sekr1t-unit-off"
