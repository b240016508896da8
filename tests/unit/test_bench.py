"""The bench's pure parts: /proc process trees and their CPU, the bench database's URL, the
profile command and the table's CPU columns."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench import database, procs
from bench.harness import profiled
from bench.report import Run, median_run, ratios, table

# A backend's line as Linux writes it, but with a name holding spaces and a parenthesis.
STAT = (
    "4242 (postgres: a) b) S 4200 4242 4242 0 -1 4194560 900 0 0 0 "
    "120 30 7 3 20 0 1 0 5000 200000000 3000 18446744073709551615"
)


def _stat(ppid: int, ticks: int) -> procs.Stat:
    return procs.Stat(ppid, "postgres", ticks)


def test_parse_stat_counts_fields_from_the_last_parenthesis() -> None:
    """A name with spaces and ')' does not shift the fields: ppid 4200, and 120 + 30 + 7 + 3
    ticks (utime, stime and the reaped children's cutime, cstime)."""
    assert procs.parse_stat(STAT) == procs.Stat(4200, "postgres: a) b", 160)


def test_read_stats_skips_what_is_not_a_readable_process(tmp_path: Path) -> None:
    """Numbered directories with a stat are read; a malformed one is left out."""
    for pid, text in [("10", STAT), ("11", "garbage")]:
        (tmp_path / pid).mkdir()
        (tmp_path / pid / "stat").write_text(text)
    (tmp_path / "self").mkdir()
    assert procs.read_stats(tmp_path) == {10: procs.parse_stat(STAT)}


def test_tree_is_a_root_and_its_descendants_only() -> None:
    """Children and grandchildren belong to the tree; a sibling of the root does not, and a
    root that is gone has no tree."""
    stats = {1: _stat(0, 0), 10: _stat(1, 0), 11: _stat(10, 0), 12: _stat(11, 0), 20: _stat(1, 0)}
    assert procs.tree(stats, 10) == {10, 11, 12}
    assert procs.tree(stats, 99) == set()


def test_cpu_between_is_the_trees_difference_and_none_when_unseen() -> None:
    """The tree's ticks after minus before, in seconds (a backend that left is in its parent's
    cutime then); None for no root or a root that is gone."""
    hz = os.sysconf("SC_CLK_TCK")
    before = procs.Snapshot({10: _stat(1, hz), 11: _stat(10, hz), 30: _stat(1, 50 * hz)})
    after = procs.Snapshot({10: _stat(1, 3 * hz), 12: _stat(10, hz), 30: _stat(1, 90 * hz)})
    assert procs.cpu_between(10, before, after) == 2.0
    assert procs.cpu_between(None, before, after) is None
    assert procs.cpu_between(77, before, after) is None


def test_a_reaped_childs_cpu_stays_in_its_parents_tree() -> None:
    """A child that burns CPU and is waited for shows in this process's tree afterwards, though
    it is gone from /proc (its parent's cutime holds it)."""
    me = os.getpid()
    before = procs.snapshot()
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)
    spent = procs.cpu_between(me, before, procs.snapshot())
    assert spent is not None
    assert spent >= 0.25


def test_settled_waits_for_new_children_to_be_reaped() -> None:
    """A child started after the first snapshot holds `settled` back until its parent has
    reaped it; with nothing new it returns at once."""
    me = os.getpid()
    before = procs.snapshot()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    assert child.stdin is not None
    child.stdin.close()
    reaper = threading.Thread(target=child.wait)
    reaper.start()
    started = time.monotonic()
    after = procs.settled(me, before, timeout=30)
    assert child.pid not in after.pids(me)
    assert time.monotonic() - started < 30
    reaper.join(30)
    assert child.returncode == 0


def test_parent_server_is_none_for_a_process_that_is_not_postgres() -> None:
    """Only a postgres process's postgres parent is taken for a postmaster; a missing pid has
    none."""
    assert procs.parent_server(os.getpid()) is None
    assert procs.parent_server(2**22 + 1) is None


def test_the_bench_database_url_keeps_all_but_the_database() -> None:
    """User, password, host, port and options are kept; only the database changes."""
    url = "postgresql://u:p@127.0.0.1:5432/test?sslmode=disable"
    assert database.with_database(url, "harvester_bench") == (
        "postgresql://u:p@127.0.0.1:5432/harvester_bench?sslmode=disable"
    )


def test_the_servers_to_measure_come_from_the_options_then_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each --database-url is measured (``embedded`` is an embedded server, None), each server
    once; without one, BENCH_DATABASE_URL's words; without either, an embedded server alone.
    The measurements of one server refuse a variable that names several."""
    url = "postgresql://postgres@127.0.0.1:5432/test"
    monkeypatch.setenv("BENCH_DATABASE_URL", f"{url}  embedded")
    assert database.servers_of(["embedded", url]) == [None, url]
    assert database.servers_of(None) == [url, None]
    other_db = url.replace("/test", "/other")  # the same server: one harvester_bench
    assert database.servers_of([url, "embedded", other_db, "embedded"]) == [url, None]
    assert database.servers_of(["embedded", url, "embedded"]) == [None, url]  # first naming
    with pytest.raises(database.BenchDatabaseError, match="names 2 servers"):
        database.one_server(None)  # bench.costs and bench.pgcosts measure on one
    assert database.one_server("embedded") is None
    assert database.one_server(url) == url
    monkeypatch.delenv("BENCH_DATABASE_URL")
    assert database.servers_of(None) == [None]
    assert database.one_server(None) is None


def test_profiled_wraps_the_worker_in_py_spy_with_one_file_each(tmp_path: Path) -> None:
    """A flame graph by default, numbered so that a second worker of the same case gets its own
    file; a supervisor's children are followed."""
    cmd = ["python", "-m", "worker", "worker", "--burst"]
    first = profiled(cmd, tmp_path, "harvester x2-1k-b1000", "flamegraph", 1)
    second = profiled(cmd, tmp_path, "harvester x2-1k-b1000", "flamegraph", 2)
    assert first[first.index("--format") + 1] == "flamegraph"
    assert first[first.index("-o") + 1] == str(tmp_path / "harvester_x2-1k-b1000-1.svg")
    assert second[second.index("-o") + 1] == str(tmp_path / "harvester_x2-1k-b1000-2.svg")
    assert "--subprocesses" not in first
    assert "--subprocesses" in second
    assert first[-len(cmd) :] == cmd


def _run(
    name: str, rate: float, cpu: float, pg: float | None, up: float | None, startup: float = 0.0
) -> Run:
    return Run(name, 1, 1000, 1, 1000, 1000 / rate, 1.0, 60.0, cpu, [], 0, pg, up, startup)


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines()[2:] if line.split()[1] == name)


def test_the_table_and_ratios_show_cpu_per_url_of_every_process() -> None:
    """Medians of the worker's CPU per URL less its start-up, Postgres's and the upstream's (a
    repetition that could not see Postgres left out), '-' where never measured, and the
    worker's CPU per URL against the ceiling's client, repetition by repetition."""
    harvester = median_run(
        [_run("harvester", 900, 0.9, 0.1, 0.2, 0.1), _run("harvester", 1000, 0.7, None, 0.3, 0.1)]
    )
    ceiling = median_run(
        [_run("ceiling", 2000, 0.4, None, None), _run("ceiling", 2000, 0.3, None, 0.1)]
    )
    assert harvester.postgres_us_per_url == 100
    assert harvester.upstream_us_per_url == 250
    assert ceiling.postgres_us_per_url is None
    assert ratios([ceiling, harvester])["1K harvester b1000 CPU/URL / ceiling CPU/URL"] == 2.0
    row = _row(table([ceiling, harvester]), "harvester")
    assert row.split("MiB")[1].split()[:4] == ["700", "100", "250", "0.47x"]
    ceiling_row = _row(table([ceiling]), "ceiling")
    assert ceiling_row.split("MiB")[1].split() == ["350", "-", "100"]
