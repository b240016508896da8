"""The stored form of a URL and the translation of asyncpg's errors, without a database."""

from __future__ import annotations

import asyncpg
import pytest

from worker.engine import store
from worker.errors import SchemaError


def test_stored_url_keeps_short_urls_and_shortens_long_ones_distinctly() -> None:
    """Within the limit a URL is stored as is; past it, as a 1024-character prefix and the
    SHA-256 of the whole URL, so two long URLs with the same prefix stay distinct."""
    assert store.stored_url("http://a/x", 64) == "http://a/x"
    a = "http://a/" + "x" * 5000
    b = a[:-1] + "y"
    short_a, short_b = store.stored_url(a, 4096), store.stored_url(b, 4096)
    assert short_a != short_b
    assert short_a.startswith(a[:1024])
    assert len(short_a) == 1024 + len("…#sha256=") + 64
    assert store.stored_url(a, 4096) == short_a  # the same URL, the same form
    assert store.stored_url(a, 5009) == a


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (asyncpg.UndefinedTableError('relation "sources" does not exist'), "no harvester tables"),
        (asyncpg.UndefinedColumnError('column "x" does not exist'), "older than this harvester"),
        (asyncpg.UndefinedFunctionError("function harvester_url_key"), "older than this"),
    ],
)
def test_a_missing_table_is_a_schema_error(error: Exception, says: str) -> None:
    """Postgres saying a table, column or function does not exist means an unmigrated database:
    a `SchemaError` that says to run harvester migrate, not "Postgres is unavailable"."""
    translated = store.store_error("cannot list sources", error)
    assert isinstance(translated, SchemaError)
    assert not translated.transient
    assert says in str(translated)
    assert str(translated).endswith(": run harvester migrate")
