"""``harvester worker --processes N``: a small parent that runs N worker processes on one host.

Each child is ``python -m worker worker --processes 1``, the very process a single worker is
(but that it stops when the parent dies: `follow_parent`), so each has its own heartbeat and
registry entry, and they share one metrics endpoint through the host's directory
(`worker.ops.metrics`). The parent holds no session, pool or port. It forwards SIGTERM and SIGINT
to every child and waits for them (each lets its running batches finish for
HARVESTER_SHUTDOWN_GRACE, as a single worker does), and restarts a child that dies unasked, after
a wait from the one backoff policy (`worker.backoff`). It gives up, stopping the others, when
a child exits 2 (a configuration problem: a restart would meet it again), or when one slot's
child has died soon after starting `MAX_QUICK_DEATHS` times in a row (a crash loop). A child
still running ``kill_after`` seconds after it was told to stop (the grace and then some: it is
stuck) is killed, so that the parent always ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from worker.backoff import Backoff

log = logging.getLogger("harvester.supervisor")

EXIT_CONFIG: Final = 2  # worker.cli.util's; the runtime does not import the CLI
EXIT_FAILED: Final = 1

# A child that lived this long was healthy: its death starts the backoff over.
STABLE_S: Final = 60.0
# Deaths in a row, each within STABLE_S of the child's start, after which the parent gives up.
MAX_QUICK_DEATHS: Final = 5
RESTART_BACKOFF: Final = Backoff(base=1.0, cap=30.0, jitter="equal")
FORWARDED: Final = (signal.SIGTERM, signal.SIGINT)
PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


def child_command(burst: bool) -> list[str]:
    """The command line of one child: this interpreter running a single worker that stops
    when this process dies (`follow_parent`)."""
    command = [sys.executable, "-m", "worker", "worker", "--processes", "1"]
    return [*command, "--parent", str(os.getpid())] + (["--burst"] if burst else [])


def follow_parent(parent: int) -> bool:
    """In a child: ask Linux for SIGTERM when the parent dies, so that a parent killed outright
    (SIGKILL) leaves no worker behind; each stops as on any SIGTERM. False if the parent is
    already gone. Elsewhere than Linux this is a no-op."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return True
    if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("worker.parent_not_followed", extra={"errno": ctypes.get_errno()})
    # Checked after the request: a parent that died before it would send nothing.
    return os.getppid() == parent


@dataclass
class _Slot:
    """One of the N places a child runs in, and its recent deaths."""

    number: int
    proc: asyncio.subprocess.Process | None = None
    quick_deaths: int = 0
    started: float = field(default=0.0)


class GiveUpError(Exception):
    """The children cannot be kept running; ``code`` is the parent's exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Supervisor:
    """Runs ``count`` children of ``command``; `run` returns the parent's exit code."""

    def __init__(
        self,
        count: int,
        command: Sequence[str],
        *,
        burst: bool = False,
        metrics_dir: Path | None = None,
        backoff: Backoff = RESTART_BACKOFF,
        kill_after: float | None = None,
    ) -> None:
        self._slots = [_Slot(n) for n in range(1, count + 1)]
        self._command = list(command)
        self._burst = burst
        self._metrics_dir = metrics_dir
        self._backoff = backoff
        self._kill_after = kill_after
        self._killer: asyncio.TimerHandle | None = None
        self._stopping = asyncio.Event()
        self._stop_signal = signal.SIGTERM

    async def run(self) -> int:
        """Start the children and keep them running until a signal, or until giving up."""
        loop = asyncio.get_running_loop()
        for sig in FORWARDED:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await self._run_all()
        finally:
            if self._killer is not None:
                self._killer.cancel()
            for sig in FORWARDED:
                loop.remove_signal_handler(sig)

    async def _run_all(self) -> int:
        log.info("supervisor.started", extra={"processes": len(self._slots)})
        tasks = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
        try:
            codes = await asyncio.gather(*tasks)
        except GiveUpError as exc:
            gave_up = exc.code
        else:
            code = max((c for c in codes if c > 0), default=0)
            log.info("supervisor.stopped", extra={"exit_code": code})
            return code
        self._stop(signal.SIGTERM)
        await asyncio.gather(*tasks, return_exceptions=True)
        log.error("supervisor.gave_up", extra={"exit_code": gave_up})
        return gave_up

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("supervisor.signal", extra={"signal": sig.name})
        self._stop(sig)

    def _stop(self, sig: signal.Signals) -> None:
        """Stop restarting, and pass ``sig`` to every running child (again on a second one)."""
        self._stop_signal = sig
        self._stopping.set()
        for slot in self._slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(sig)
        if self._kill_after is not None and self._killer is None:
            loop = asyncio.get_running_loop()
            self._killer = loop.call_later(self._kill_after, self._kill_stragglers)

    def _kill_stragglers(self) -> None:
        """SIGKILL the children still running long after they were told to stop."""
        for slot in self._slots:
            if slot.proc is not None and slot.proc.returncode is None:
                log.error(
                    "supervisor.child_killed",
                    extra={"slot": slot.number, "pid": slot.proc.pid, "after_s": self._kill_after},
                )
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()

    async def _keep(self, slot: _Slot) -> int:
        """Run the slot's child again and again until the parent stops; its last exit code."""
        while True:
            code = await self._run_child(slot)
            if self._stopping.is_set():
                # A child the forwarded signal itself ended (before its handlers) stopped as asked.
                return 0 if code == -self._stop_signal else code
            delay = self._judge(slot, code)
            if delay is None:
                return code
            log.warning(
                "supervisor.child_died",
                extra={
                    "slot": slot.number,
                    "pid": slot.proc.pid if slot.proc else None,
                    "exit_code": code,
                    "restart_in_s": round(delay, 2),
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return 0  # stopped as asked, with no child running in this slot

    async def _run_child(self, slot: _Slot) -> int:
        slot.started = time.monotonic()
        slot.proc = await asyncio.create_subprocess_exec(*self._command)
        log.info("supervisor.child_started", extra={"slot": slot.number, "pid": slot.proc.pid})
        if self._stopping.is_set():  # a signal came while it was being started
            slot.proc.send_signal(self._stop_signal)
        code = await slot.proc.wait()
        self._forget_metrics(slot.proc.pid)
        return code

    def _judge(self, slot: _Slot, code: int) -> float | None:
        """The wait before the slot's child starts again; None: it is not restarted (its work
        is done). Raises `GiveUpError` when restarting cannot help."""
        if code == 0 and self._burst:
            return None
        if code == EXIT_CONFIG:
            log.error("supervisor.child_config_error", extra={"slot": slot.number})
            raise GiveUpError(EXIT_CONFIG)
        lived = time.monotonic() - slot.started
        slot.quick_deaths = slot.quick_deaths + 1 if lived < STABLE_S else 1
        if slot.quick_deaths >= MAX_QUICK_DEATHS:
            log.error(
                "supervisor.crash_loop",
                extra={"slot": slot.number, "deaths": slot.quick_deaths, "exit_code": code},
            )
            raise GiveUpError(code if code > 0 else EXIT_FAILED)
        return self._backoff.delay(slot.quick_deaths)

    def _forget_metrics(self, pid: int) -> None:
        """A dead child's live gauges leave the host's sum; its counters stay (prometheus
        multiprocess mode's rule, which a child that stops cleanly follows itself)."""
        if self._metrics_dir is None:
            return
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
