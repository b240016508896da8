"""An import-linter contract type for rules its own types cannot state: that modules must not
import a *submodule* of an external package (import-linter's graph knows external packages by
their top-level name only, so `forbidden` cannot refuse ``aiohttp.web`` while allowing
``aiohttp``). Used by the contracts in pyproject.toml; `make lint` runs them.

It reads each source module's file with `ast` (nothing is imported), and finds every
``import a.b.c`` and ``from a.b import c`` naming a forbidden module or one below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _source_file(module: str) -> Path:
    base = Path.cwd().joinpath(*module.split("."))
    package = base / "__init__.py"
    return package if package.exists() else base.with_suffix(".py")


class ForbiddenSubmodulesContract(Contract):
    """``source_modules`` (and everything below them) must not import ``forbidden_modules``,
    which may be submodules of external packages (``aiohttp.web``)."""

    type_name = "forbidden_submodules"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    forbidden_modules = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        forbidden: list[str] = list(self.forbidden_modules)  # type: ignore[call-overload]
        violations = []
        for source in self.source_modules:  # type: ignore[attr-defined]
            for module in sorted({source.name} | graph.find_descendants(source.name)):
                tree = ast.parse(_source_file(module).read_text(encoding="utf-8"))
                for line, name in _imported_names(tree):
                    if any(name == f or name.startswith(f + ".") for f in forbidden):
                        violations.append(f"{module}:{line} imports {name}")
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for violation in check.metadata["violations"]:
            output.print_error(violation, bold=False)
            output.new_line()
