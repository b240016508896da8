"""The byte budget's memory bound: the README's Sizing formula."""

from __future__ import annotations

from pathlib import Path

from worker.engine.budget import memory_bound
from worker.settings import load_settings


def test_memory_bound_at_the_defaults_is_the_readme_figure(repo_root: Path) -> None:
    """memory_bound is the README's Sizing formula: 656 + 30 + 48 + 10 MiB at the defaults."""
    assert "60 + 656 + 30 + 48 + 10 ≈ 800 MiB" in (repo_root / "README.md").read_text()
    assert memory_bound(load_settings()) == (656 + 30 + 48 + 10) * 1024 * 1024
