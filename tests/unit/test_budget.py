"""The byte budget's memory bound: the Sizing formula of docs/operations.md."""

from __future__ import annotations

from pathlib import Path

from worker.engine.budget import memory_bound
from worker.settings import load_settings


def test_memory_bound_at_the_defaults_is_the_readme_figure(repo_root: Path) -> None:
    """memory_bound is the Sizing formula in docs/operations.md: 656 + 30 + 48 + 14 MiB at the defaults."""
    text = (repo_root / "docs" / "operations.md").read_text()
    assert "60 + 656 + 30 + 48 + 14 ≈ 810 MiB" in text
    assert memory_bound(load_settings()) == (656 + 30 + 48 + 14) * 1024 * 1024
