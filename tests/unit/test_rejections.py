"""Listing a refused job must never stand in the way of refusing it."""

from __future__ import annotations

import logging

import pytest
from redis.asyncio import Redis

from tests.helpers import closed_port
from worker.queue import rejections


async def test_a_redis_that_cannot_be_reached_is_logged_and_the_refusal_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No Redis error escapes `record`: the job is refused all the same, and the log says the
    refusal was not listed (naming the error, never the job's arguments)."""
    redis = Redis(host="127.0.0.1", port=closed_port(), socket_connect_timeout=1)
    try:
        with caplog.at_level(logging.WARNING, logger="harvester.jobs"):
            await rejections.record(redis, "q", "refused-1")
    finally:
        await redis.aclose()
    [entry] = [r for r in caplog.records if r.getMessage() == "job.rejection_not_listed"]
    assert entry.reason == "ConnectionError"  # type: ignore[attr-defined]
