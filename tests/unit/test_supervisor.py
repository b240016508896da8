"""The parent of ``harvester worker --processes N`` restarts children that die, gives up on a
configuration error or a crash loop, and clears a dead child's live metrics; children here are
tiny Python processes that record their pid and exit with a scripted code."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from worker.backoff import Backoff
from worker.cli.main import build_parser
from worker.runtime.supervisor import MAX_QUICK_DEATHS, Supervisor, child_command

# Appends its pid to DIR/runs, leaves a live gauge file as prometheus_client's multiprocess mode
# would, and exits with the n-th of CODES (the last one from then on; "kill": SIGKILLed).
CHILD = """
import os, pathlib, sys
folder, codes = pathlib.Path(sys.argv[1]), sys.argv[2].split(",")
with (folder / "runs").open("a") as f:
    f.write(f"{os.getpid()}\\n")
(folder / f"gauge_livesum_{os.getpid()}.db").touch()
runs = len((folder / "runs").read_text().split())
code = codes[min(runs, len(codes)) - 1]
os.kill(os.getpid(), 9) if code == "kill" else sys.exit(int(code))
"""
QUICK = Backoff(base=0.01, cap=0.05, jitter="equal")


def _supervisor(tmp_path: Path, codes: str, *, count: int = 1, burst: bool = True) -> Supervisor:
    command = [sys.executable, "-c", CHILD, str(tmp_path), codes]
    return Supervisor(count, command, burst=burst, metrics_dir=tmp_path, backoff=QUICK)


def _runs(tmp_path: Path) -> list[str]:
    return (tmp_path / "runs").read_text().split()


async def test_a_child_that_dies_is_restarted_and_its_live_gauges_are_cleared(
    tmp_path: Path,
) -> None:
    """A child SIGKILLed, or exiting 9, starts again; once every child has finished a burst,
    the parent exits 0, and no dead child's live gauge file is left."""
    code = await _supervisor(tmp_path, "kill,9,0").run()
    assert code == 0
    assert len(_runs(tmp_path)) == 3
    assert not any(p.name.startswith("gauge_live") for p in os.scandir(tmp_path))


async def test_a_configuration_error_in_a_child_is_not_retried(tmp_path: Path) -> None:
    """A child exiting 2 (configuration) is not restarted: the parent exits 2 after one try."""
    assert await _supervisor(tmp_path, "2", count=1, burst=False).run() == 2
    assert len(_runs(tmp_path)) == 1


async def test_a_crash_loop_ends_with_the_childs_exit_code(tmp_path: Path) -> None:
    """Children that keep dying soon after starting are given up on after MAX_QUICK_DEATHS."""
    assert await _supervisor(tmp_path, "3", burst=False).run() == 3
    assert len(_runs(tmp_path)) == MAX_QUICK_DEATHS


async def test_giving_up_on_one_slot_stops_the_others(tmp_path: Path) -> None:
    """When one slot gives up, the long-running children of the other slots are stopped too."""
    # The first child to claim DIR/stay runs for a minute; the other exits 2 at once.
    script = (
        "import pathlib, sys, time\n"
        "try:\n"
        "    (pathlib.Path(sys.argv[1]) / 'stay').open('x').close()\n"
        "except FileExistsError:\n"
        "    sys.exit(2)\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(2, [sys.executable, "-c", script, str(tmp_path)], backoff=QUICK)
    started = time.monotonic()
    assert await supervisor.run() == 2
    assert time.monotonic() - started < 30  # the sleeper was stopped, not waited for


def test_children_run_one_worker_each() -> None:
    """A child is ``python -m worker worker --processes 1``: it never supervises in turn, and
    it knows its parent (to stop when that dies)."""
    command = child_command(burst=True)
    assert command[1:6] == ["-m", "worker", "worker", "--processes", "1"]
    assert command[6:] == ["--parent", str(os.getpid()), "--burst"]
    assert build_parser().parse_args(command[3:]).parent == os.getpid()


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_processes_out_of_range_is_a_usage_error(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--processes takes 1 to 64; anything else exits 2 naming the option."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["worker", "--processes", value])
    assert stopped.value.code == 2
    assert "--processes" in capsys.readouterr().err


async def test_a_child_stuck_past_its_stop_is_killed(tmp_path: Path) -> None:
    """A child that ignores SIGTERM is SIGKILLed ``kill_after`` seconds after the stop, so the
    parent ends instead of waiting for it."""
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "try:\n"
        "    (pathlib.Path(sys.argv[1]) / 'stay').open('x').close()\n"
        "except FileExistsError:\n"
        "    sys.exit(2)\n"
        "time.sleep(60)\n"
    )
    command = [sys.executable, "-c", script, str(tmp_path)]
    supervisor = Supervisor(2, command, backoff=QUICK, kill_after=0.5)
    started = time.monotonic()
    assert await supervisor.run() == 2
    assert time.monotonic() - started < 30  # the stuck child was killed, not waited for
