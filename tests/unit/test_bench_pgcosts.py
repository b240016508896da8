"""`bench.pgcosts`' pure parts: a process's CPU from /proc, the variants' schemas and URLs."""

from __future__ import annotations

import os

from bench.pgcosts import NO_UPKEEP, VARIANTS, backend_cpu, schema_name, with_search_path


def test_backend_cpu_reads_user_and_system_time_of_a_process() -> None:
    """/proc/<pid>/stat's CPU times, in seconds (a backend's own: it reaps no children; here,
    with the children this test process reaped): for this process, what os.times says."""
    for _ in range(200_000):  # some CPU, so that both are above zero
        pass
    t = os.times()
    expected = t.user + t.system + t.children_user + t.children_system
    assert abs(backend_cpu(os.getpid()) - expected) <= 4 / os.sysconf("SC_CLK_TCK")


def test_each_variant_gets_a_schema_name_of_its_own() -> None:
    names = [schema_name(v) for v in VARIANTS]
    assert len(set(names)) == len(names)
    assert all(n.isidentifier() and n.islower() for n in names)
    assert set(VARIANTS) >= NO_UPKEEP


def test_the_search_path_goes_in_the_query_string() -> None:
    assert with_search_path("postgresql://h/db", "s") == "postgresql://h/db?search_path=s,public"
    assert with_search_path("postgresql://h/db?sslmode=disable", "s").endswith(
        "?sslmode=disable&search_path=s,public"
    )
