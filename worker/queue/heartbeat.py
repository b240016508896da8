"""Worker heartbeats and the registry of worker processes: the Redis keys that say which workers
run, which stopped, and what each reports.

Each worker process has an id, ``<host>:<pid>`` (``<host>:<pid>:<n>`` for the n-th worker one
process runs, as tests do), and two entries in Redis:

- ``<queue>:health-check:<id>``, arq's heartbeat, written every HARVESTER_HEALTH_CHECK_INTERVAL
  seconds to live twice that (`beat_ttl`: one late beat is not a death): while it exists, the
  process is alive. Its jobs are taken over by another worker once it is gone
  (`worker.queue.holds`).
- its field in the hash ``<queue>:workers``, a `Registration` (JSON), rewritten with each beat
  (always after the heartbeat) and removed at a clean shutdown (before the heartbeat). So an
  entry whose heartbeat is gone is a process that died without cleaning up.

A dead entry is forgotten an hour after its last beat, or as soon as a new worker starts on the
same host (it is that worker's replacement: a restart must not leave the host unhealthy).
Writers are `worker.runtime.worker.HarvesterWorker`; readers are ``harvester status`` and
``harvester health`` (`read_workers`).
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from arq.constants import health_check_key_suffix
from redis.asyncio import Redis

from worker.settings import Settings

FORGET_AFTER_S = 3600.0
_GLOB = re.compile(r"[*?\[\]\\]")  # what SCAN's MATCH reads as a pattern
JOB_COUNTS = ("complete", "failed", "retried", "ongoing")


def worker_id(instance: int = 1) -> str:
    """This process's worker id: ``<host>:<pid>``, with ``:<instance>`` from the second on."""
    base = f"{socket.gethostname()}:{os.getpid()}"
    return base if instance == 1 else f"{base}:{instance}"


def beat_key(queue: str, worker: str) -> str:
    """The heartbeat key of worker ``worker`` on ``queue``."""
    return f"{queue}{health_check_key_suffix}:{worker}"


def beat_ttl(interval: float) -> float:
    """How long a heartbeat written every ``interval`` seconds lives: two intervals, so that a
    busy event loop's late beat does not look like a death (and a job taken over from it)."""
    return 2 * interval


def held_key(queue: str) -> str:
    """The hash of ``queue``'s running jobs: job id -> the run holding it, ``<worker id>
    <token>`` (`worker.queue.holds`)."""
    return f"{queue}:held"


def hold_owner(hold: str) -> str:
    """The worker id in a hold, ``<worker id> <run token>`` (`worker.queue.holds`)."""
    return hold.partition(" ")[0]


def registry_key(queue: str) -> str:
    """The hash of the worker processes that have run on ``queue``."""
    return f"{queue}:workers"


@dataclass(frozen=True, slots=True)
class Registration:
    """What a worker writes in the registry with each beat (times are epoch seconds)."""

    host: str
    pid: int
    started_at: float
    interval: float  # seconds between beats; the heartbeat lives `beat_ttl` (twice that)
    last_beat: float
    jobs: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> Registration | None:
        """The registration in ``raw``, or None for anything a worker does not write."""
        try:
            data = orjson.loads(raw)
            jobs = data.get("jobs", {})
            return cls(
                host=str(data["host"]),
                pid=int(data["pid"]),
                started_at=float(data["started_at"]),
                interval=float(data["interval"]),
                last_beat=float(data["last_beat"]),
                jobs={str(k): int(v) for k, v in jobs.items()},
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True, slots=True)
class WorkerState:
    """One worker process as a reader sees it: alive while its heartbeat exists."""

    id: str
    host: str
    pid: int | None
    alive: bool
    jobs: dict[str, int]  # complete, failed, retried, ongoing: as of its last beat
    last_beat_age_s: float | None  # None: not known (a worker that is not registered)
    expires_in_s: float | None  # when its heartbeat expires; None once it has
    started_at: str | None  # ISO 8601, UTC
    heartbeat: str | None  # arq's heartbeat text, while alive
    held: tuple[str, ...] = ()  # the ids of the jobs it runs now (`worker.queue.holds`)


async def register(redis: Redis, queue: str, worker: str, registration: Registration) -> None:
    """Record ``worker`` in the registry (call it after writing its heartbeat, whose life this
    stretches to `beat_ttl`)."""
    ttl_ms = int(beat_ttl(registration.interval) * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.pexpire(beat_key(queue, worker), ttl_ms)
        pipe.hset(registry_key(queue), worker, registration.to_json().decode())
        await pipe.execute()


async def unregister(redis: Redis, queue: str, worker: str) -> None:
    """Take ``worker`` out of the registry (call it before deleting its heartbeat)."""
    await redis.hdel(registry_key(queue), worker)  # type: ignore[misc]


async def prune(redis: Redis, queue: str, host: str) -> list[str]:
    """Forget the dead workers of ``host`` (a new worker there replaces them) and those dead
    for more than `FORGET_AFTER_S` anywhere; return their ids."""
    now = time.time()
    gone = [
        w.id
        for w in await read_workers(redis, queue, now=now, forget_after=math.inf)
        if not w.alive and w.last_beat_age_s is not None
        and (w.host == host or w.last_beat_age_s > FORGET_AFTER_S)
    ]  # fmt: skip
    if gone:
        await redis.hdel(registry_key(queue), *gone)  # type: ignore[misc]
    return gone


async def read_workers(
    redis: Redis, queue: str, *, now: float | None = None, forget_after: float = FORGET_AFTER_S
) -> list[WorkerState]:
    """Every worker process of ``queue``: those beating, and the registered ones that stopped
    (dead for less than ``forget_after`` seconds). Dead ones first, then by host and id."""
    now = time.time() if now is None else now
    prefix = beat_key(queue, "")
    pattern = _GLOB.sub(r"\\\g<0>", prefix) + "*"  # a queue name is matched literally
    ids = {k.decode(errors="replace")[len(prefix) :] async for k in redis.scan_iter(pattern)}
    ids |= {k.decode(errors="replace") for k in await redis.hkeys(registry_key(queue))}  # type: ignore[misc]
    order = sorted(ids)
    # One transaction, so that the registry and the heartbeats are seen at one instant: a worker
    # writes its heartbeat before its registration and removes them in the other order.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hgetall(registry_key(queue))
        pipe.hgetall(held_key(queue))
        for worker in order:
            pipe.get(beat_key(queue, worker))
            pipe.pttl(beat_key(queue, worker))
        replies: list[Any] = await pipe.execute()
    registry = {k.decode(errors="replace"): v for k, v in replies[0].items()}
    holding: dict[str, list[str]] = {}
    for job, hold in sorted(replies[1].items()):
        owner = hold_owner(hold.decode(errors="replace"))
        holding.setdefault(owner, []).append(job.decode(errors="replace"))
    states = []
    for n, worker in enumerate(order):
        value, ttl_ms = replies[2 + 2 * n], replies[3 + 2 * n]
        state = _state(worker, registry.get(worker), value, ttl_ms, now, holding.get(worker, []))
        if state is not None and (state.alive or (state.last_beat_age_s or 0) <= forget_after):
            states.append(state)
    return sorted(states, key=lambda w: (w.alive, w.host, w.id))


def _state(
    worker: str,
    raw: bytes | None,
    value: bytes | None,
    ttl_ms: int,
    now: float,
    held: list[str],
) -> WorkerState | None:
    """A worker's state from its registration (if any) and its heartbeat (if still there)."""
    reg = Registration.from_json(raw) if raw is not None else None
    if value is None and reg is None:
        return None  # gone between the scan and the read, or never registered
    host, _, rest = worker.partition(":")
    pid_text = rest.split(":")[0]
    pid = reg.pid if reg else (int(pid_text) if pid_text.isdigit() else None)
    alive = value is not None
    expires = max(0, ttl_ms) / 1000 if alive else None
    if reg is None:
        age = None
    elif alive and expires is not None:
        # From the heartbeat's own expiry: no clock of another host involved.
        age = max(0.0, beat_ttl(reg.interval) - expires)
    else:
        age = max(0.0, now - reg.last_beat)
    return WorkerState(
        id=worker,
        host=reg.host if reg else host,
        pid=pid,
        alive=alive,
        jobs=dict(reg.jobs) if reg else _jobs_from_beat(value),
        held=tuple(held),
        last_beat_age_s=None if age is None else round(age, 1),
        expires_in_s=expires,
        started_at=_iso(reg.started_at) if reg else None,
        heartbeat=value.decode(errors="replace") if value is not None else None,
    )


def _jobs_from_beat(value: bytes | None) -> dict[str, int]:
    """The job counts in arq's heartbeat text (``... j_complete=3 j_failed=0 ...``)."""
    jobs = {}
    for part in (value or b"").decode(errors="replace").split():
        key, _, number = part.partition("=")
        if key.startswith("j_") and key[2:] in JOB_COUNTS and number.isdigit():
            jobs[key[2:]] = int(number)
    return jobs


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def health_check_key(settings: Settings) -> str:
    """The heartbeat key of this worker process, arq's health check key (`beat_key`).

    One per process rather than arq's one per queue, so that a dead worker is not covered up
    by a live one on the same host or elsewhere.
    """
    return beat_key(settings.queue, worker_id())
