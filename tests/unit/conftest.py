"""Unit tests: pure logic, no services. Settings here point at nothing and are never connected;
a unit test that asks for Postgres, Redis or the session's servers fails at once, saying where
it belongs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers import settings_factory
from worker.settings import Settings


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """Settings that never connect (closed ports), with backoff waits off."""
    return settings_factory(
        database_url="postgresql://unit@127.0.0.1:9/none",
        redis_url="redis://127.0.0.1:9/0",
        queue="harvester:unit",
        retry_base_delay=0.0,
    )


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def _servers() -> None:
    pytest.fail("a unit test asked for Postgres or Redis: it belongs in tests/integration")
