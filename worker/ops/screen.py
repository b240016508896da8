"""How `harvester status` is drawn: the `Status` as rich renderables, for a terminal (the CLI)
or a captured screen (the demo). Every value read from Redis or Postgres is shown as plain,
escaped text, never as markup."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from worker.logs import safe
from worker.ops.status import Status


def _t(value: object, style: str = "") -> Text:
    """Untrusted text (job ids, hosts, kinds: anything from Redis or Postgres) as a plain cell:
    never read as rich markup, escape sequences shown as escapes."""
    return Text(safe(str(value)), style=style)


def _count(summary: dict[str, object], *keys: str) -> Text:
    """A summary's count (a number, or a dict of numbers by kind, summed); empty without a
    summary, ``?`` for a summary that is not what a job writes."""
    if not summary:
        return Text("")
    total = 0
    for key in keys:
        value = summary.get(key, 0)
        numbers = value.values() if isinstance(value, dict) else [value]
        if not all(type(n) is int for n in numbers):
            return Text("?")
        total += sum(numbers)
    return Text(str(total))


def render(s: Status) -> Group:
    """The status screen as rich renderables. Every value read from Redis or Postgres goes
    through `_t`, so a job id such as ``[/x]`` or one holding ESC cannot break or drive it."""
    oldest = "-" if s.oldest_ready_age_s is None else f"{s.oldest_ready_age_s:.1f} s"
    head = Text.assemble(
        ("harvester ", "bold"),
        f"queue {safe(repr(s.queue))} at {s.at}\n",
        f"queued {s.queued} (ready {s.ready}, deferred {s.deferred}), ",
        f"oldest ready job waiting {oldest}, ",
        f"in progress {len(s.in_progress)}, ",
        (f"{s.urls_per_second:.1f} URLs/s", "bold"),
        " over the last minute",
    )
    workers = Table(title="workers", title_justify="left", expand=False)
    for col in ("host", "heartbeat", "expires in"):
        workers.add_column(col)
    for w in s.workers:
        workers.add_row(_t(w.host), _t(w.heartbeat), f"{w.expires_in_s:.0f} s")
    if not s.workers:
        workers.add_row(Text("none reporting", style="red"), "", "")

    rate = Table(title="URLs landed", title_justify="left")
    rate.add_column("minute (UTC)")
    rate.add_column("URLs", justify="right")
    for minute, n in s.urls_per_minute:
        rate.add_row(_t(minute), str(n))

    fails = Table(title="failures, last hour", title_justify="left")
    fails.add_column("kind")
    fails.add_column("count", justify="right")
    for kind, n in s.failures_last_hour.items():
        fails.add_row(_t(kind), str(n))

    jobs = Table(title="recent jobs", title_justify="left")
    for col in ("job", "result", "documents", "failed", "unchanged", "seconds", "finished"):
        jobs.add_column(col, justify="left" if col in ("job", "result", "finished") else "right")
    for j in s.recent_jobs:
        summ = j.summary or {}
        result = {True: _t("ok"), False: _t("failed", "red"), None: _t("running")}[j.success]
        jobs.add_row(
            _t(j.job_id),
            result,
            _count(summ, "documents"),
            _count(summ, "failures"),
            _count(summ, "unchanged", "not_modified"),
            _t(summ.get("seconds", "")),
            _t((j.finished_at or "")[11:19]),
        )
    parts: list[Table | Text] = [head, workers, jobs, rate, fails]
    if s.sources.get("total"):
        src = s.sources
        parts.append(
            Text(
                f"sources: {src['total']} registered, {src['due']} due, "
                f"{src['polling']} being polled, {src['failing']} failing"
            )
        )
    if s.in_progress:
        parts.append(_t("in progress: " + ", ".join(s.in_progress)))
    return Group(*parts)
