"""Processes a test starts must all stop, even when the test fails: every descendant of a
process, found through /proc, is killed, whatever process group it put itself in (honcho gives
each child a group of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren...)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command may hold spaces and parentheses: fields start after the last ")".
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (a zombie, dead but not yet reaped, is not)."""
    running = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            running.append(pid)
    return running


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it (a no-op for those already gone)."""
    for target in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def kill_tree_in(pid: int, folder: Path) -> None:
    """`kill_tree` of ``pid`` only if it is still the process a test started in ``folder``
    (its working directory is there): a pid read from a file may have been given to another
    process since, and that one must live."""
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return  # gone, or not ours to look at
    if cwd == folder or folder in cwd.parents:
        kill_tree(pid)


async def stop_tree(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` and all it started, then reap it."""
    if proc.returncode is None:
        kill_tree(proc.pid)
        await proc.wait()
    else:
        for orphan in descendants(proc.pid):
            os.kill(orphan, signal.SIGKILL)


def free_ports(*offsets: int) -> int:
    """A port P such that P + each of ``offsets`` is free on 127.0.0.1 right now (honcho gives
    a formation's processes PORT, PORT + 1, ..., PORT + 100 for the next type...)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + max(offsets, default=0) >= 65535:
            continue
        held = []
        try:
            for offset in offsets:
                sock = socket.socket()
                held.append(sock)  # before the bind: a port in use must not leak the socket
                sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError("no free set of ports found")
