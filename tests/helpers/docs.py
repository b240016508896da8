"""The examples in the README and docs/, read from the Markdown so that tests run them as written.

Every fenced code block in the documentation is preceded by a marker line:

    <!-- example: NAME -->                    run by the tests, in order with the other examples
    <!-- example: NAME background -->         a long-running command (a worker, the API): started
                                              in the background and stopped at the end
    <!-- example: NAME not run: REASON -->    shown only, for the reason given
    <!-- output: NAME -->                     what a command prints; tests compare its shape

`session_script` turns a document's runnable examples into one bash script, run in a folder of
its own with harvester on PATH. The only changes a test makes to an example are `localise`'s:
https://api.example.com points at a local upstream, the example servers' URLs and port 8080 at
the test's own.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)\n(?P<code>.*?)^(?P=indent)```", re.S | re.M
)
_MARKER = re.compile(r"<!-- (?P<kind>example|output): (?P<name>[\w.-]+)(?P<rest>[^>]*)-->\s*$")


@dataclass(frozen=True)
class Example:
    path: Path
    kind: str  # example | output
    name: str
    lang: str
    code: str
    background: bool = False
    not_run: str | None = None

    @property
    def runnable(self) -> bool:
        return self.kind == "example" and self.not_run is None


@dataclass(frozen=True)
class Unmarked:
    path: Path
    line: int


def _dedent(code: str, indent: str) -> str:
    return "".join(line.removeprefix(indent) for line in code.splitlines(keepends=True))


def blocks(path: Path) -> list[Example | Unmarked]:
    """Every fenced block of ``path``, as an `Example` or, lacking a marker, `Unmarked`."""
    text = path.read_text(encoding="utf-8")
    found: list[Example | Unmarked] = []
    for m in _BLOCK.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = _MARKER.search(before)
        if marker is None:
            found.append(Unmarked(path, text.count("\n", 0, m.start()) + 1))
            continue
        rest = marker["rest"].strip()
        not_run = rest.split("not run:", 1)[1].strip() if "not run:" in rest else None
        found.append(
            Example(
                path,
                marker["kind"],
                marker["name"],
                m["lang"],
                _dedent(m["code"], m["indent"]),
                background="background" in rest.split("not run:")[0].split(),
                not_run=not_run,
            )
        )
    return found


def examples(path: Path) -> dict[str, Example]:
    """The marked blocks of ``path`` by name."""
    return {b.name: b for b in blocks(path) if isinstance(b, Example)}


def example(path: Path, name: str) -> str:
    """The code of the example ``name`` in ``path`` (KeyError if there is none)."""
    return examples(path)[name].code


def localise(code: str, replacements: Mapping[str, str]) -> str:
    """``code`` with each key of ``replacements`` replaced by its value."""
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


def session_script(
    runnable: list[Example], replacements: Mapping[str, str], ready: Mapping[str, str]
) -> str:
    """One bash script running ``runnable`` in order. A background example's last command runs
    in a session of its own (its pid in NAME.pid, its output in NAME.log), after the lines
    before it; the script then waits for the ``ready`` command of that example to succeed (at
    most 60 s)."""
    lines = ["set -euo pipefail"]
    for ex in runnable:
        code = localise(ex.code, replacements)
        lines.append(f"echo '>>> {ex.name}' >&2")
        if ex.lang == "python":
            lines += [f"cat > {ex.name}.py <<'HARVESTER_EXAMPLE'", code, "HARVESTER_EXAMPLE"]
            if ex.background:  # a server or a consumer: runs while the examples after it do
                lines += _in_background(ex.name, f"python -u {ex.name}.py", ready[ex.name])
            else:
                lines.append(f"python {ex.name}.py")
        elif ex.lang == "sql":
            lines += [f"cat > {ex.name}.sql <<'HARVESTER_EXAMPLE'", code, "HARVESTER_EXAMPLE"]
            lines.append(f'psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f {ex.name}.sql')
        elif ex.background:
            # The last command keeps running (in a session of its own); what comes before it
            # (exports, a .env file) runs in the script, so later examples see it too.
            *setup, command = code.rstrip().splitlines()
            lines += setup
            lines += _in_background(ex.name, command, ready[ex.name])
        else:
            lines.append(code)
    return "\n".join(lines) + "\n"


def _in_background(name: str, command: str, check: str) -> list[str]:
    """Lines starting ``command`` in a session of its own (pid in NAME.pid, output in
    NAME.log), then waiting (60 s at most) for ``check`` to succeed."""
    return [
        f"setsid bash -c {shlex.quote(command)} > {name}.log 2>&1 &",
        f"echo $! > {name}.pid",
        f"for _ in $(seq 600); do {check} >/dev/null 2>&1 && break; sleep 0.1; done; "
        f"{check} >/dev/null 2>&1 || {{ cat {name}.log >&2; exit 1; }}",
    ]
