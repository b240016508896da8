"""CPU seconds of process trees, read from /proc (Linux): what the bench charges to each server.

A server (Postgres, nginx, granian) is a tree of processes: Postgres forks a backend per
connection and reaps it when the client leaves. Each live process's /proc/<pid>/stat holds its
own CPU (utime, stime) and that of its children it has reaped (cutime, cstime), so the sum of the
four fields over the live tree is the CPU of everything the tree ever ran, exited backends
included, and a difference of two readings is what a run cost it. What escapes: a process
reaped between the reading of its parent and its own (the bench lets the worker's backends
finish leaving first, `settled`), and orphans re-parented out of the tree (servers reap their
own). Another client of a shared server is charged too: the figure is the server's, not one
connection's.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The fields of one /proc/<pid>/stat the bench needs."""

    ppid: int
    comm: str
    ticks: int  # utime + stime + cutime + cstime, in clock ticks


def parse_stat(text: str) -> Stat:
    """One /proc/<pid>/stat line. The command name sits in parentheses and may itself hold
    spaces and parentheses, so the fields are counted from the last ``)``."""
    head, _, tail = text.rpartition(")")
    fields = tail.split()
    # After the name: state, ppid, ..., utime (11), stime, cutime, cstime (14).
    return Stat(int(fields[1]), head.partition("(")[2], sum(int(x) for x in fields[11:15]))


def read_stats(proc: Path = PROC) -> dict[int, Stat]:
    """Every process's stat, by pid; processes that end while being read are left out."""
    stats: dict[int, Stat] = {}
    for entry in proc.glob("[0-9]*/stat"):
        try:
            stats[int(entry.parent.name)] = parse_stat(entry.read_text())
        except (OSError, ValueError, IndexError):
            continue  # ended meanwhile, or not a process directory after all
    return stats


def tree(stats: dict[int, Stat], root: int) -> set[int]:
    """``root`` and its live descendants (empty when ``root`` is gone)."""
    if root not in stats:
        return set()
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass(frozen=True)
class Snapshot:
    """Every process's stat at one moment."""

    stats: dict[int, Stat]

    def pids(self, root: int) -> set[int]:
        return tree(self.stats, root)

    def seconds(self, root: int) -> float:
        """CPU seconds of ``root``'s tree so far, reaped children included."""
        ticks = sum(self.stats[pid].ticks for pid in tree(self.stats, root))
        return ticks / os.sysconf("SC_CLK_TCK")


def snapshot(proc: Path = PROC) -> Snapshot:
    return Snapshot(read_stats(proc))


def settled(root: int, before: Snapshot, timeout: float = 5.0) -> Snapshot:
    """A snapshot once ``root``'s tree has no process it did not have ``before`` (the worker's
    backends have left and been reaped), or after ``timeout`` seconds: a shared server's other
    clients may keep connections of their own."""
    known = before.pids(root)
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot()
        if now.pids(root) <= known or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def cpu_between(root: int | None, before: Snapshot, after: Snapshot) -> float | None:
    """CPU seconds ``root``'s tree spent between two snapshots; None when not measured."""
    if root is None or root not in after.stats:
        return None
    return after.seconds(root) - before.seconds(root)


def parent_server(pid: int, names: tuple[str, ...] = ("postgres", "postmaster")) -> int | None:
    """The parent of ``pid`` (a Postgres backend: its postmaster) when this machine can see it
    and it runs one of ``names``; None for a server elsewhere or in another pid namespace."""
    stats = read_stats_of((pid,))
    if pid not in stats:
        return None
    parent = stats[pid].ppid
    found = read_stats_of((parent,))
    ok = parent in found and found[parent].comm in names and stats[pid].comm in names
    return parent if ok else None


def read_stats_of(pids: tuple[int, ...], proc: Path = PROC) -> dict[int, Stat]:
    """The stats of some processes, those still running."""
    out: dict[int, Stat] = {}
    for pid in pids:
        try:
            out[pid] = parse_stat((proc / str(pid) / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue
    return out


def wait(proc: subprocess.Popen[bytes]) -> tuple[int, float, float]:
    """Wait for ``proc``; return its exit code, peak RSS in MiB (Linux ru_maxrss is KiB) and
    CPU seconds (user + system, its waited-for children's included)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
