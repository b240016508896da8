"""Memory: a worker's peak RSS stays within the sizing formula (docs/operations.md) under the worst bodies."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.helpers import wait_until
from tests.helpers.faults import Stack, WorkerProcess, enqueue, outcome_counts
from tests.helpers.upstream import Upstream, gzip_bomb
from worker.engine.budget import memory_bound
from worker.settings import load_settings

MiB = 1024 * 1024
SMALL = {
    "concurrency": 4,
    "per_host": 4,
    "max_body_bytes": 4 * MiB,
    "max_jobs": 2,
    "writers": 1,
    "copy_chunk_bytes": MiB,
    "buffer_bytes": 4 * MiB,
    "request_timeout": 20,
    "retry_max_time": 5,
}


def _status(pid: int, field: str) -> int:
    """A ``Vm*`` figure of ``pid`` from /proc, in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB$", text, re.MULTILINE)
    assert match is not None, text
    return int(match.group(1)) * 1024


def _worst_bodies(upstream: Upstream, size: int) -> list[str]:
    """Paths of bodies as large and as costly as HARVESTER_MAX_BODY_BYTES allows (three of them
    land as documents)."""
    objects = b"[" + b"{}," * ((size - 3) // 3) + b"{}]"
    served = {
        "objects": (objects, "application/json"),
        "string": (b'"' + b"x" * (size - 2) + b'"', "application/json"),
        "floats": (b"[" + b"1.5e-10," * ((size - 8) // 8) + b"0]", "application/json"),
        "cut": (objects[:-1], "application/json"),
        "html": (b"<html>" + b"<p>x</p>" * (size // 8 - 2) + b"</html>", "text/plain"),
        "exponents": (b"[" + b"1e-16383," * ((size - 9) // 9) + b"0]", "application/json"),
    }
    for name, (body, _) in served.items():
        assert len(body) <= size, name
    upstream.served.update(served)
    return [f"/served/{name}" for name in served]


async def test_peak_rss_stays_within_the_sizing_formula(
    stack: Stack, upstream: Upstream, spawn_worker: Callable[..., WorkerProcess]
) -> None:
    """Two jobs of max-size [{},...], string, float, truncated, HTML and exponent bodies, gzip
    bombs and over-size bodies, through 4 slots and a 4 MiB budget: the worker's peak RSS
    (VmHWM) stays under its idle RSS plus `memory_bound`, the README's formula."""
    settings = load_settings(database_url=stack.database_url, **SMALL)
    gzip_bomb()  # built before the worker starts: the upstream's memory, not the worker's
    bodies = _worst_bodies(upstream, settings.max_body_bytes)
    urls = []
    for copy in range(3):  # the same bodies under other URLs: every slot stays busy
        urls += [upstream.url(f"{path}?copy={copy}") for path in bodies]
        urls += [
            upstream.url(f"/gzip-bomb?copy={copy}"),
            upstream.url(f"/big?size={2 * settings.max_body_bytes}&copy={copy}"),
        ]
    worker = spawn_worker(**SMALL)
    try:
        await worker.start()
        assert worker.proc is not None
        pid = worker.proc.pid

        async def started() -> bool:
            return "worker.started" in worker.log()

        await wait_until(started, timeout=30)
        idle = _status(pid, "VmRSS")
        await enqueue(stack, urls, batch_size=len(urls) // 2, prefix="memory")

        async def all_landed() -> bool:
            return (await outcome_counts(stack.database_url))[0] == len(urls)

        await wait_until(all_landed, timeout=120)
        assert worker.running
        peak = _status(pid, "VmHWM")
    finally:
        await worker.stop()
    assert (await outcome_counts(stack.database_url))[1:] == (3 * 3, 0)  # documents, duplicates
    bound = memory_bound(settings)
    assert peak <= idle + bound, (
        f"peak RSS {peak / MiB:.0f} MiB over idle {idle / MiB:.0f} MiB + {bound / MiB:.0f} MiB"
    )
