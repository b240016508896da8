"""How `harvester status` is drawn: the `Status` as rich renderables, for a terminal (the CLI)
or a captured screen (the demo). Every value read from Redis or Postgres is shown as plain,
escaped text, never as markup.

The panels come most important first: the queue, the workers, failures by kind, then jobs in
progress, recent jobs, URLs per minute, sources and host policies. Given a height, `render` fits
the screen to it: the less important panels lose rows first, and a panel that has no room is
left out, so a small terminal still shows the queue, the workers and the failures. Rows never
wrap: long job ids and hosts are shortened with an ellipsis unless ``wide``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from worker.logs import safe
from worker.ops.status import RecentJob, Status, Worker

JOB_ID_CHARS = 12  # a job id longer than this shows as its first 12 characters and "…"
HOST_CHARS = 20
KEEP_ROWS = 5  # rows of each important panel that the panels before it leave room for
ELLIPSIS = "…"

# A panel drawn with at most ``rows`` rows (None: all of them); None when it has nothing to say.
Draw = Callable[[int | None], RenderableType | None]


def _t(value: object, style: str = "") -> Text:
    """Untrusted text (job ids, hosts, kinds: anything from Redis or Postgres) as a plain cell:
    never read as rich markup, escape sequences shown as escapes."""
    return Text(safe(str(value)), style=style)


def shorten(text: str, keep: int) -> str:
    """``text`` cut to its first ``keep`` characters and an ellipsis, if that makes it shorter.

    Cut after `safe`, never before: a cut could hide the marks that redaction looks for.
    """
    return text if len(text) <= keep + 1 else text[:keep] + ELLIPSIS


def _id(value: str, keep: int, wide: bool, style: str = "") -> Text:
    text = safe(value)
    return Text(text if wide else shorten(text, keep), style=style)


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


def _table(columns: Sequence[tuple[str, str]], wide: bool) -> Table:
    """A borderless table whose rows never wrap: cells too long end in an ellipsis. Columns
    are (name, kind): an ``id`` column (a job id, a host) is the one that gives way when space
    is short, or, when ``wide``, folds onto more lines so that it is shown whole; ``text`` and
    ``number`` columns keep at least their header's width."""
    table = Table(header_style="bold", box=None, pad_edge=False, expand=False)
    for name, kind in columns:
        flexible = kind == "id"
        table.add_column(
            name,
            justify="right" if kind == "number" else "left",
            no_wrap=not (flexible and wide),
            overflow="fold" if flexible and wide else "ellipsis",
            min_width=None if flexible else len(name),
        )
    return table


def _panel(title: str, table: Table, shown: int, total: int) -> Group:
    """A titled table, and how many rows it leaves out."""
    parts: list[RenderableType] = [Text(title, style="bold", no_wrap=True, overflow="ellipsis")]
    parts.append(table)
    if total > shown:
        parts.append(Text(f"{ELLIPSIS} {total - shown} more", style="dim"))
    return Group(*parts)


def _header(s: Status) -> Text:
    oldest = "-" if s.oldest_ready_age_s is None else f"{s.oldest_ready_age_s:.1f} s"
    return Text.assemble(
        ("harvester", "bold"),
        f" queue {safe(repr(s.queue))} at {s.at}\n",
        f"queued {s.queued} (ready {s.ready}, deferred {s.deferred}), ",
        f"oldest ready job waiting {oldest}\n",
        f"in progress {len(s.in_progress)}, ",
        (f"{s.urls_per_second:.1f} URLs/s", "bold"),
        f" over the last {s.rate_window_s:.0f} s",
    )


def _workers(s: Status, rows: int | None, wide: bool) -> RenderableType:
    alive = sum(w.alive for w in s.workers)
    dead = len(s.workers) - alive
    title = f"workers: {alive} alive" + (f", {dead} dead" if dead else "")
    table = _table(
        [
            *[("host", "id"), ("pid", "id"), ("state", "text"), ("done", "number")],
            *[("failed", "number"), ("running", "number"), ("held", "id")],
            ("last beat", "number"),
        ],
        wide,
    )
    shown = s.workers if rows is None else s.workers[:rows]
    for w in shown:  # dead ones come first
        table.add_row(*_worker_row(w, wide))
    if not s.workers:
        table.add_row(Text("none reporting", style="red"))
    return _panel(title, table, len(shown), len(s.workers))


def _worker_row(w: Worker, wide: bool) -> list[Text]:
    process = w.id[len(w.host) + 1 :] if w.id.startswith(w.host + ":") else str(w.pid or "?")
    beat = "-" if w.last_beat_age_s is None else f"{w.last_beat_age_s:.0f} s ago"
    return [
        _id(w.host, HOST_CHARS, wide),
        _id(process, JOB_ID_CHARS, wide),
        Text("alive", style="green") if w.alive else Text("dead", style="bold red"),
        Text(str(w.jobs.get("complete", ""))),
        Text(str(w.jobs.get("failed", ""))),
        Text(str(w.jobs.get("ongoing", ""))),
        _held(w.held, wide, w.alive),
        Text(beat, style="" if w.alive else "red"),
    ]


def _held(jobs: tuple[str, ...], wide: bool, alive: bool) -> Text:
    """The ids of the jobs a worker runs now; a dead one's wait for another worker to take
    them over (`worker.queue.holds`)."""
    if not jobs:
        return Text("-")
    return Text(", ").join(_id(j, JOB_ID_CHARS, wide, "" if alive else "red") for j in jobs)


def _failures(s: Status, rows: int | None) -> RenderableType:
    if not s.failures_last_hour:
        return Text.assemble(("failures by kind, last hour", "bold"), ": none")
    table = _table([("kind", "id"), ("count", "number")], wide=False)
    kinds = list(s.failures_last_hour.items())
    shown = kinds if rows is None else kinds[:rows]
    for kind, n in shown:
        table.add_row(_t(kind), str(n))
    return _panel("failures by kind, last hour", table, len(shown), len(kinds))


def _in_progress(s: Status, rows: int | None, wide: bool) -> RenderableType | None:
    if not s.in_progress:
        return None
    # ``rows`` counts job ids here: they share lines.
    shown = s.in_progress if rows is None else s.in_progress[:rows]
    text = Text.assemble((f"jobs in progress ({len(s.in_progress)})", "bold"), ": ")
    text.append(Text(", ").join(_id(j, JOB_ID_CHARS, wide) for j in shown))
    if len(shown) < len(s.in_progress):
        text.append(f", {ELLIPSIS} {len(s.in_progress) - len(shown)} more", style="dim")
    return text


_RESULT = {"ok": "", "failed": "red", "running": "yellow", "queued": "yellow", "unknown": "dim"}


def _recent(s: Status, rows: int | None, wide: bool) -> RenderableType | None:
    if not s.recent_jobs:
        return None
    table = _table(
        [
            *[("job", "id"), ("result", "text"), ("documents", "number"), ("failed", "number")],
            *[("unchanged", "number"), ("seconds", "number"), ("finished", "text")],
        ],
        wide,
    )
    shown = s.recent_jobs if rows is None else s.recent_jobs[:rows]
    for j in shown:
        table.add_row(*_recent_row(j, wide))
    return _panel("recent jobs", table, len(shown), len(s.recent_jobs))


def _recent_row(j: RecentJob, wide: bool) -> list[Text]:
    summ = j.summary or {}
    return [
        _id(j.job_id, JOB_ID_CHARS, wide),
        Text(j.state, style=_RESULT.get(j.state, "")),
        _count(summ, "documents"),
        _count(summ, "failures"),
        _count(summ, "unchanged", "not_modified"),
        _t(summ.get("seconds", "")),
        _t((j.finished_at or "")[11:19]),
    ]


def _per_minute(s: Status, rows: int | None) -> RenderableType | None:
    if not s.urls_per_minute:
        return None
    minutes = s.urls_per_minute if rows is None else s.urls_per_minute[-rows:]
    text = Text("URLs landed per minute (UTC)", style="bold")
    text.append(": " + ", ".join(f"{safe(m)} {n}" for m, n in minutes))
    return text


def _sources(s: Status) -> RenderableType | None:
    src = s.sources
    if not src.get("total"):
        return None
    return Text.assemble(
        ("sources", "bold"),
        f": {src['total']} registered, {src['due']} due, ",
        f"{src['polling']} being polled, {src['failing']} failing",
    )


def _hosts(s: Status) -> RenderableType | None:
    """One line: the default rate, each host's policy and pause (``harvester hosts list``)."""
    policies: dict[str, dict[str, float | int | None]] = s.hosts.get("policies", {})
    paused: dict[str, float] = s.hosts.get("paused", {})
    if not policies and not paused:
        return None
    default = s.hosts.get("default_rps") or 0
    text = Text("hosts", style="bold")
    text.append(f" (others {f'{default:g}/s' if default else 'not paced'}): ")
    parts = []
    for host in sorted({*policies, *paused}):
        p = policies.get(host, {})
        said = [] if p.get("rps") is None else [f"{p['rps']:g}/s"]
        said += [] if p.get("concurrency") is None else [f"{p['concurrency']} in flight"]
        said += [f"paused {paused[host]:g} s"] if host in paused else []
        parts.append(f"{safe(host)} {' '.join(said)}")
    text.append(", ".join(parts))
    return text


@dataclass(frozen=True, slots=True)
class _Panel:
    draw: Draw
    size: int  # how many rows it would like
    important: bool  # room for KEEP_ROWS of its rows is kept, whatever comes before it


def _panels(s: Status, wide: bool) -> list[_Panel]:
    return [
        _Panel(lambda rows: _header(s), 0, True),
        _Panel(lambda rows: _workers(s, rows, wide), len(s.workers), True),
        _Panel(lambda rows: _failures(s, rows), len(s.failures_last_hour), True),
        _Panel(lambda rows: _in_progress(s, rows, wide), len(s.in_progress), False),
        _Panel(lambda rows: _recent(s, rows, wide), len(s.recent_jobs), False),
        _Panel(lambda rows: _per_minute(s, rows), len(s.urls_per_minute), False),
        _Panel(lambda rows: _sources(s), 0, False),
        _Panel(lambda rows: _hosts(s), 0, False),
    ]


def _height(renderable: RenderableType | None, width: int) -> int:
    if renderable is None:
        return 0
    console = Console(width=width, file=io.StringIO(), color_system=None)
    return len(console.render_lines(renderable, console.options, pad=False))


def _fit(panel: _Panel, room: int, width: int) -> RenderableType | None:
    """The panel with as many rows as fit in ``room`` lines (at least one), or None."""
    if panel.size == 0:
        drawn = panel.draw(None)
        return drawn if _height(drawn, width) <= room else None
    best, low, high = None, 1, panel.size
    while low <= high:  # a panel's height never shrinks as it gets rows: search by halves
        rows = (low + high) // 2
        drawn = panel.draw(rows)
        if _height(drawn, width) <= room:
            best, low = drawn, rows + 1
        else:
            high = rows - 1
    return best


def render(s: Status, *, wide: bool = False, width: int = 80, height: int | None = None) -> Group:
    """The status screen as rich renderables, at most ``height`` lines of ``width`` columns
    when a height is given (the least important panels give way), everything otherwise. Every
    value read from Redis or Postgres goes through `_t` or `_id`, so a job id such as ``[/x]``
    or one holding ESC cannot break or drive it."""
    panels = _panels(s, wide)
    if height is None:
        return Group(*(d for p in panels if (d := p.draw(None)) is not None))
    smallest = [_height(p.draw(min(p.size, KEEP_ROWS) or None), width) for p in panels]
    parts: list[RenderableType] = []
    room = height
    for n, panel in enumerate(panels):
        reserved = sum(
            h for p, h in zip(panels[n + 1 :], smallest[n + 1 :], strict=True) if p.important
        )
        drawn = _fit(panel, room - reserved, width)
        if drawn is not None:
            parts.append(drawn)
            room -= _height(drawn, width)
    return Group(*parts)
