"""``arq worker.app.WorkerSettings``: the arq CLI's way in, kept where it has always been.

The worker itself lives in `worker.runtime.app`; ``harvester worker`` is the supported entry
point.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from worker.runtime import app

        return app.WorkerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
