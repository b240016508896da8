"""Migration discovery: the shipped files, in order, named as the runner requires."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.engine.migrate import SQL_DIR, discover
from worker.errors import StoreError


def test_discover_orders_the_shipped_migrations() -> None:
    """sql/NNN_name.sql files come back in numeric order."""
    versions = [m.version for m in discover(SQL_DIR)]
    assert versions == sorted(versions)
    assert versions[:2] == [1, 2]


def test_discover_refuses_badly_named_files(tmp_path: Path) -> None:
    """A file that is not NNN_name.sql is an error, not silently skipped."""
    (tmp_path / "001_ok.sql").write_text("SELECT 1")
    (tmp_path / "two.sql").write_text("SELECT 1")
    with pytest.raises(StoreError, match=r"two\.sql"):
        discover(tmp_path)
