"""Logging: fixed dotted event names with key=value fields, and the job id bound by contextvar.

``log.info("job.done", extra={"documents": 10})`` renders as
``2026-01-01T00:00:00Z INFO job.done job_id=abc documents=10`` (or one JSON object a line
with ``HARVESTER_LOG_FORMAT=json``). URLs' credentials are redacted before anything is written.
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

job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message",
    "asctime",
    "taskName",
}
# user:password@ in any URL, and the password in DSNs such as postgresql://u:p@h/db.
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]*(?::[^/@\s]*)?@")
# Query parameters that commonly carry credentials: ?api_key=..., &access_token=..., &sig=...
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[\w.-]*(?:token|key|secret|password|passwd|pwd|auth|signature|sig|"
    r"credential|session)[\w.-]*)=)[^&#\s'\"]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """Hide credentials in every URL in ``text``: userinfo and token-like query parameters."""
    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>***@", text))


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
        fields["job_id"] = job_id
    for key, value in vars(record).items():
        if key not in _RESERVED and not key.startswith("_"):
            fields[key] = redact(value) if isinstance(value, str) else value
    return fields


def _render(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return redact(text if " " not in text else orjson.dumps(text).decode())


class KeyValueFormatter(logging.Formatter):
    """``time level event key=value ...`` for terminals."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        parts = [f"{stamp}Z", record.levelname, redact(record.getMessage())]
        parts += [f"{k}={_render(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": redact(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            data["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(data, default=lambda o: redact(str(o))).decode()


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Install harvester's formatter on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
