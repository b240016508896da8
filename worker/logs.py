"""Logging: fixed dotted event names with key=value fields, and the job id bound by contextvar.

``log.info("job.done", extra={"documents": 10})`` renders as
``2026-01-01T00:00:00Z INFO job.done job_id=abc documents=10`` (or one JSON object a line
with ``HARVESTER_LOG_FORMAT=json``). URLs' credentials are redacted before anything is written,
and so is every secret value the process loaded (`register_secret`: credential profiles, OAuth2
access tokens). Characters that are not printable (newlines, terminal escapes) are written as
escapes, so text from a job cannot forge a log line or drive an operator's terminal.

arq's own lines pass through `ArqLineFilter`: its job-start line is dropped (arq cuts the job's
arguments to 80 characters before any redaction could see them; harvester's jobs log
``job.started`` themselves), and expected refusals (a malformed job) lose their traceback.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from worker.errors import HarvesterError

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}
# user:password@ in any URL, and the password in DSNs such as postgresql://u:p@h/db. Up to the
# last "@" of the authority, so a password holding "@" is hidden whole.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s]*@")
# Query (or fragment) parameters that commonly carry credentials: ?api_key=, &access_token=,
# &sig=, ?jwt=, ?code= (OAuth), ?sid=, #id_token=...
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;#](?:[\w.-]*(?:token|key|secret|password|passwd|pass|pwd|auth|signature|sig|"
    r"credential|session|jwt|code|sid|ticket|otp|assertion)[\w.-]*)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


REDACTED = "[redacted]"


class _Secrets:
    """The secret values this process holds, replaced wherever they appear in text `redact`
    sees (log lines, failure details, command-line errors). ``enabled`` exists for the test that
    proves the scrubbing has teeth; nothing else turns it off."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None
        self.enabled = True

    def add(self, value: str) -> None:
        if not value or value in self.values:
            return
        self.values.add(value)
        self._compile()

    def discard(self, value: str) -> None:
        if value in self.values:
            self.values.discard(value)
            self._compile()

    def _compile(self) -> None:
        # Longest first, so a secret that contains another is hidden whole.
        ordered = sorted(self.values, key=len, reverse=True)
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        if self.pattern is None or not self.enabled:
            return text
        return self.pattern.sub(REDACTED, text)


secrets = _Secrets()


def register_secret(value: str) -> None:
    """Have `redact` hide ``value`` from now on, wherever it appears."""
    secrets.add(value)


def retire_secret(value: str) -> None:
    """Stop looking for ``value`` (an access token long replaced), so the scrubber's pattern
    stays the size of the secrets a process holds, not of every token it ever had."""
    secrets.discard(value)


def redact(text: str) -> str:
    """Hide credentials in ``text``: every registered secret value, and in every URL its
    userinfo and token-like query parameters.

    Always redact before cutting text short: a cut can remove the "@" that marks userinfo.
    """
    text = secrets.scrub(text)
    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))


def printable(text: str) -> str:
    """``text`` with every character that is not printable (newlines, ESC, C1 controls, bidi
    overrides) written as an escape such as ``\\x1b`` or ``\\u202e``."""
    if text.isprintable():
        return text  # the usual case, checked in C
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def safe(text: str) -> str:
    """``text`` fit for a log line or a terminal: credentials redacted, then escaped."""
    return printable(redact(text))


@contextmanager
def bound_job(job_id: str) -> Iterator[None]:
    """Bind ``job_id`` to every log line written inside the block."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    job_id = job_id_var.get()
    if job_id is not None:
        fields["job_id"] = safe(job_id)
    for key, value in vars(record).items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = safe(value) if isinstance(value, str) else value
    return fields


def _render(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return safe(text if " " not in text else orjson.dumps(text).decode())


class KeyValueFormatter(logging.Formatter):
    """``time level event key=value ...`` for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}Z", record.levelname, safe(record.getMessage())]
        parts += [f"{k}={_render(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            # A traceback spans lines on purpose; each line is escaped on its own.
            trace = self.formatException(record.exc_info).splitlines()
            line += "\n" + "\n".join(safe(t) for t in trace)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": safe(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        line = orjson.dumps(data, default=lambda o: safe(str(o))).decode()
        return secrets.scrub(line)  # values nested in dicts and lists too


# arq's formats, as arq 0.26-0.28 writes them.
_ARQ_JOB_START = "%6.2fs → %s(%s)%s"
_ARQ_BAD_JOB = "deserializing job %s failed"
_ARQ_JOB_FAILED = "%6.2fs ! %s failed, %s: %s"


class ArqLineFilter(logging.Filter):
    """Makes arq's own log lines fit harvester's log (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == _ARQ_JOB_START:
            return False
        exc = record.exc_info[1] if record.exc_info else None
        if record.msg == _ARQ_BAD_JOB and exc is not None:
            # A job that is not a valid arq job: one line with the reason, not a traceback.
            record.msg, record.levelno, record.levelname = "job.invalid", logging.WARNING, "WARNING"
            args = record.args if isinstance(record.args, tuple) else ()
            record.__dict__["job_id"] = str(args[0]) if args else "?"
            record.__dict__["reason"] = str(exc.__cause__ or exc)
            record.args, record.exc_info, record.exc_text = (), None, None
        elif record.msg == _ARQ_JOB_FAILED and _expected(exc):
            record.exc_info, record.exc_text = None, None  # the message says what was wrong
        return True


def tame_arq_logs() -> None:
    """Put `ArqLineFilter` on arq's worker logger, once (its records are changed before any
    handler sees them)."""
    logger = logging.getLogger("arq.worker")
    if not any(isinstance(f, ArqLineFilter) for f in logger.filters):
        logger.addFilter(ArqLineFilter())


def _expected(exc: BaseException | None) -> bool:
    return isinstance(exc, HarvesterError)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Install harvester's formatter on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else KeyValueFormatter())
    tame_arq_logs()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
