"""The status screen and list tables, drawn from values: untrusted text stays plain."""

from __future__ import annotations


def test_untrusted_text_cannot_break_or_drive_the_status_screen() -> None:
    """Job ids, hosts and kinds that look like rich markup or hold escape sequences render as
    plain text: no crash, no restyling, no raw ESC reaching the terminal."""
    import io

    from rich.console import Console

    from worker.ops.screen import render
    from worker.ops.status import RecentJob, Status, Worker

    evil = ["[/x]", "[link=http://evil.example]click[/link]", "a\x1b]8;;http://e\x07b", "\x9b2J"]
    status = Status(
        queue="q",
        at="2026-01-01T00:00:00+00:00",
        queued=1,
        ready=1,
        deferred=0,
        oldest_ready_age_s=None,
        in_progress=evil,
        workers=[Worker(host=h, heartbeat=h, expires_in_s=1) for h in evil],
        urls_per_minute=[("00:00", 1)],
        urls_per_second=0.0,
        failures_last_hour={h: 1 for h in evil},
        recent_jobs=[
            RecentJob(h, "fetch_batch", True, "2026-01-01T00:00:00", {"documents": h}) for h in evil
        ],
    )
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="truecolor").print(
        render(status)
    )
    text = out.getvalue()
    assert "[/x]" in text
    assert "[link=http://evil.example]click[/link]" in text
    assert "\x1b]8;;http://e" not in text
    assert "\x9b" not in text
    assert "\\x1b]8;;http://e\\x07" in text


def test_list_tables_escape_what_they_show() -> None:
    """`failures list` and `sources list` tables escape control characters and redact
    credentials in every cell."""
    from worker.cli.util import format_table

    table = format_table(("job", "url"), [["a\nb\x1b[2J", "http://u:pw@h/x?token=t0k"]])
    assert "\x1b" not in table
    assert "a\\x0ab\\x1b[2J" in table
    assert "pw@" not in table
    assert "t0k" not in table
