"""The test harness's process cleanup kills only what a test started."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.processes import alive, kill_tree_in


def test_a_pid_from_a_file_is_killed_only_if_it_is_still_the_tests_process(tmp_path: Path) -> None:
    """kill_tree_in spares a process working elsewhere (a reused pid) and kills its own."""
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    mine.mkdir()
    elsewhere.mkdir()
    proc = subprocess.Popen(["sleep", "60"], cwd=elsewhere)
    try:
        kill_tree_in(proc.pid, mine)
        assert alive([proc.pid]) == [proc.pid]
        kill_tree_in(proc.pid, elsewhere)
        assert proc.wait(timeout=10) != 0
    finally:
        proc.kill()
        proc.wait()
