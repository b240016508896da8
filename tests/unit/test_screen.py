"""The status screen and list tables, drawn from values: untrusted text stays plain, and the
screen fits the terminal with the most important panels first."""

from __future__ import annotations

import io
from dataclasses import replace

from rich.console import Console

from worker.ops.screen import render
from worker.ops.status import RecentJob, Status, Worker, judge_health, rate


def _worker(host: str, pid: int, alive: bool = True, age: float = 1.0) -> Worker:
    return Worker(
        id=f"{host}:{pid}",
        host=host,
        pid=pid,
        alive=alive,
        jobs={"complete": 3, "failed": 0, "retried": 0, "ongoing": 1},
        last_beat_age_s=age,
        expires_in_s=5.0 if alive else None,
        started_at="2026-01-01T00:00:00+00:00",
        heartbeat="Jan-01 00:00:00 j_complete=3" if alive else None,
    )


def _untrusted_worker(text: str) -> Worker:
    """A worker whose id, host and heartbeat are all ``text``."""
    return Worker(
        id=text,
        host=text,
        pid=None,
        alive=True,
        jobs={},
        last_beat_age_s=None,
        expires_in_s=1,
        started_at=None,
        heartbeat=text,
    )


def _status(**changes: object) -> Status:
    values: dict[str, object] = {
        "queue": "q",
        "at": "2026-01-01T00:00:00+00:00",
        "queued": 1,
        "ready": 1,
        "deferred": 0,
        "oldest_ready_age_s": None,
        "in_progress": [],
        "workers": [],
        "urls_per_minute": [("00:00", 1)],
        "urls_per_second": 0.0,
        "failures_last_hour": {},
        "recent_jobs": [],
    }
    values.update(changes)
    return Status(**values)  # type: ignore[arg-type]


def _recent(job_id: str) -> RecentJob:
    return RecentJob(job_id, "fetch_batch", True, "2026-01-01T00:00:07", {"documents": 5}, "ok")


def _draw(status: Status, width: int, height: int | None = None, wide: bool = False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    console.print(render(status, wide=wide, width=width, height=height))
    return out.getvalue()


def test_untrusted_text_cannot_break_or_drive_the_status_screen() -> None:
    """Job ids, hosts and kinds that look like rich markup or hold escape sequences render as
    plain text: no crash, no restyling, no raw ESC reaching the terminal."""
    evil = ["[/x]", "[link=http://evil.example]click[/link]", "a\x1b]8;;http://e\x07b", "\x9b2J"]
    status = _status(
        in_progress=evil,
        workers=[_untrusted_worker(h) for h in evil],
        failures_last_hour={h: 1 for h in evil},
        recent_jobs=[
            RecentJob(h, "fetch_batch", True, "2026-01-01T00:00:00", {"documents": h}, "ok")
            for h in evil
        ],
    )
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="truecolor").print(
        render(status, wide=True)
    )
    text = out.getvalue()
    assert "[/x]" in text
    assert "[link=http://evil.example]click[/link]" in text
    assert "\x1b]8;;http://e" not in text
    assert "\x9b" not in text
    assert "\\x1b]8;;http://e\\x07" in text


def test_an_80x24_screen_keeps_the_queue_workers_and_failures() -> None:
    """At 80x24, with many workers, failure kinds and jobs, the screen is at most 23 lines of
    80 columns; the queue, the dead worker and every failure kind are on it; the panels that
    did not fit whole say how many rows they leave out."""
    status = _status(
        workers=[_worker("dead-host", 7, alive=False, age=42)]
        + [_worker(f"worker-host-{n}", 100 + n) for n in range(15)],
        failures_last_hour={"http_status": 9, "timeout": 4, "connect": 2, "blocked": 1},
        in_progress=[f"job-{n}" for n in range(6)],
        recent_jobs=[_recent(f"job-{n}") for n in range(12)],
        urls_per_minute=[(f"00:0{n}", 100 * n) for n in range(5)],
        sources={"total": 3, "due": 1, "polling": 0, "failing": 1},
    )
    screen = _draw(status, width=80, height=23)
    lines = screen.rstrip("\n").split("\n")
    assert len(lines) <= 23, screen
    assert max(len(line.rstrip()) for line in lines) <= 80, screen
    assert "queued 1 (ready 1, deferred 0)" in screen
    assert "workers: 15 alive, 1 dead" in screen
    assert "dead-host      7    dead" in screen
    assert "42 s ago" in screen
    assert "failures by kind, last hour" in screen
    for kind in status.failures_last_hour:
        assert kind in screen, screen
    assert "… 5 more" in screen, screen  # the workers that did not fit are counted


def test_long_job_ids_are_shortened_unless_wide() -> None:
    """At 80 columns a job id is its first 12 characters and an ellipsis, in the jobs in
    progress and the recent jobs; --wide shows it whole; at 200x50 every panel shows."""
    long_ids = [f"catalog-import-2026-01-01-batch-{n:04d}" for n in range(4)]
    status = _status(
        workers=[_worker("h", 1)],
        failures_last_hour={"timeout": 1},
        in_progress=long_ids[:1],
        recent_jobs=[_recent(j) for j in long_ids[1:]],
        sources={"total": 3, "due": 1, "polling": 0, "failing": 1},
    )
    narrow = _draw(status, width=80, height=23)
    for job in long_ids:
        assert job not in narrow
        assert job[:12] + "…" in narrow
    wide = _draw(status, width=200, height=49, wide=True)
    for text in [*long_ids, "recent jobs", "URLs landed per minute", "sources: 3 registered"]:
        assert text in wide, wide


def test_each_worker_row_names_the_jobs_it_holds() -> None:
    """The workers panel has a held column: the ids of the jobs each worker runs now, a dead
    one's included (they wait for a takeover); "-" for none."""
    dead = replace(_worker("dead-host", 7, alive=False, age=12), held=("import-a",))
    busy = replace(_worker("live-host", 8), held=("import-b", "import-c"))
    idle = _worker("idle-host", 9)
    screen = _draw(_status(workers=[dead, busy, idle]), width=120, height=30)
    rows = {line.split()[0]: line for line in screen.split("\n") if line.strip()}
    assert "held" in screen
    assert "import-a" in rows["dead-host"]
    assert "import-b, import-c" in rows["live-host"]
    assert " - " in rows["idle-host"]
    assert "import" not in rows["idle-host"]


def test_a_rate_is_taken_over_the_time_its_rows_cover() -> None:
    """URLs/s divides the rows landed by the time since the first of them (at least a second,
    at most the 60 s window), never a short burst by a whole minute."""
    assert rate(30, 10.0) == (3.0, 10.0)
    assert rate(500, 0.25) == (500.0, 1.0)
    assert rate(120, 75.0) == (2.0, 60.0)
    assert rate(0, None) == (0.0, 60.0)


def test_health_names_the_dead_workers_of_its_host() -> None:
    """Healthy when every worker of the host is alive and at least --min are; a dead one is
    named; another host's dead worker counts only for --all (host None)."""
    here = [_worker("here", 1), _worker("here", 2)]
    elsewhere = [_worker("there", 3, alive=False, age=30)]
    assert judge_health(here + elsewhere, "q", "here").healthy
    everywhere = judge_health(here + elsewhere, "q", None)
    assert not everywhere.healthy
    assert "'there:3' (pid 3) stopped reporting 30 s ago" in "\n".join(everywhere.lines)
    dead_here = judge_health([here[0], _worker("here", 9, alive=False, age=5)], "q", "here")
    assert not dead_here.healthy
    assert "1 of 2 worker processes on host 'here' stopped reporting" in dead_here.lines[0]
    assert "'here:9'" in dead_here.lines[1]
    assert judge_health(here, "q", "here", min_alive=2).healthy
    too_few = judge_health(here, "q", "here", min_alive=3)
    assert not too_few.healthy
    assert "--min 3" in too_few.lines[0]
    none = judge_health(elsewhere, "q", "here")
    assert not none.healthy
    assert "no worker on host 'here' has reported on 'q'" in none.lines[0]


def test_list_tables_escape_what_they_show() -> None:
    """`failures list` and `sources list` tables escape control characters and redact
    credentials in every cell."""
    from worker.cli.util import format_table

    table = format_table(("job", "url"), [["a\nb\x1b[2J", "http://u:pw@h/x?token=t0k"]])
    assert "\x1b" not in table
    assert "a\\x0ab\\x1b[2J" in table
    assert "pw@" not in table
    assert "t0k" not in table
