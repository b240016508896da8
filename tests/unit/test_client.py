"""The Redis client harvester builds from REDIS_URL (inspected without connecting), how its
errors are said, and how URLs are cut into jobs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import MasterNotFoundError, SentinelConnectionPool
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from worker.errors import BadJobError, ConfigError, RedisUnavailableError
from worker.queue.client import plan_batches
from worker.queue.connection import redis_error, redis_pool
from worker.queue.payload import JOB_NAME, FetchBatch
from worker.queue.serialization import serialize
from worker.settings import load_settings


async def test_a_sentinel_url_makes_a_pool_that_asks_the_sentinels_for_the_primary() -> None:
    """redis+sentinel:// gives a Sentinel pool for the service, with the primary's database and
    password, the sentinels' own password, and the same timeouts and retries as a plain URL."""
    s = load_settings(
        redis_url="redis+sentinel://:pw@s1:26380,[::1]/svc/2?sentinel_password=spw", queue="q"
    )
    client = redis_pool(s)
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert (pool.service_name, pool.is_master) == ("svc", True)
        kw = pool.connection_kwargs
        assert (kw["db"], kw["password"], kw["socket_timeout"]) == (2, "pw", s.redis_socket_timeout)
        assert kw["retry"] is not None
        sentinels = pool.sentinel_manager.sentinels
        addresses = [
            (
                c.connection_pool.connection_kwargs["host"],
                c.connection_pool.connection_kwargs["port"],
            )
            for c in sentinels
        ]
        assert addresses == [("s1", 26380), ("::1", 26379)]
        assert sentinels[0].connection_pool.connection_kwargs["password"] == "spw"
        assert client.default_queue_name == "q"
    finally:
        await client.aclose()


async def test_url_carries_db_password_and_tls_options() -> None:
    """rediss:// selects TLS, with the password, database number and query options honoured."""
    s = load_settings(redis_url="rediss://:pw@cache.internal:6380/2?ssl_cert_reqs=none", queue="q")
    client = redis_pool(s)
    try:
        pool = client.connection_pool
        assert pool.connection_class is SSLConnection
        kw = pool.connection_kwargs
        assert (kw["host"], kw["port"], kw["db"], kw["password"]) == (
            "cache.internal",
            6380,
            2,
            "pw",
        )
        assert kw["ssl_cert_reqs"] == "none"
        assert kw["socket_timeout"] == s.redis_socket_timeout
        assert client.default_queue_name == "q"
    finally:
        await client.aclose()


def _job_size(batch: FetchBatch) -> int:
    """The bytes of ``batch`` as arq stores it (the latest enqueue time arq can write)."""
    envelope = {"t": None, "f": JOB_NAME, "a": [], "k": batch.as_kwargs(), "et": 253402300799999}
    return len(serialize(envelope))


def test_plan_batches_cuts_by_count_and_by_job_bytes() -> None:
    """Batches hold at most batch_size URLs and, as JSON jobs, at most max_job_bytes; every URL
    goes out once, in order (non-ASCII URLs counted in UTF-8 bytes)."""
    urls = [f"https://api.example/{i}/" + "é" * (i % 300) for i in range(2000)]
    batches = list(
        plan_batches(urls, batch_size=700, source="s", max_urls=10_000, max_job_bytes=65_536)
    )
    assert [u for b in batches for u in b.urls] == urls
    assert all(1 <= len(b.urls) <= 700 for b in batches)
    sizes = [_job_size(b) for b in batches]
    assert max(sizes) <= 65_536
    assert max(sizes) > 60_000  # cut near the limit, not far below it
    assert all(b.source == "s" for b in batches)


def test_plan_batches_refuses_a_url_too_large_for_any_job() -> None:
    """A URL that alone would exceed max_job_bytes cannot be sent: BadJobError says so."""
    urls = ["https://api.example/a", "https://api.example/" + "x" * 70_000]
    with pytest.raises(BadJobError, match="HARVESTER_MAX_JOB_BYTES"):
        list(plan_batches(urls, batch_size=10, source=None, max_urls=10, max_job_bytes=65_536))


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"batch_size": 11, "max_urls": 10}, "HARVESTER_MAX_BATCH_URLS"),
        ({"source": "a\nb"}, "'source' contains a control character"),
        ({"source": "x" * 201}, "'source' is longer than 200 characters"),
    ],
)
def test_plan_batches_refuses_bad_arguments_before_reading_a_url(
    kwargs: dict[str, object], says: str
) -> None:
    """Arguments no worker would accept are refused before the first URL is read."""

    def urls() -> Iterator[str]:
        raise AssertionError("a URL was read")
        yield ""

    options: dict[str, Any] = {"batch_size": 10, "source": None, "max_urls": 10}
    options.update(kwargs)
    with pytest.raises(BadJobError, match=re.escape(says)):
        plan_batches(urls(), max_job_bytes=65_536, **options)


def test_redis_errors_become_harvester_errors_naming_the_url() -> None:
    """A refused connection is "Redis is unavailable at <URL without password> (REDIS_URL)";
    a database the server lacks and refused credentials are configuration errors."""
    s = load_settings(redis_url="redis://:sekrit@cache:6379/99", queue="q")
    down = redis_error(s, RedisConnectionError("Error 111 connecting to cache:6379."))
    assert isinstance(down, RedisUnavailableError)
    assert str(down) == (
        "Redis is unavailable at redis://***@cache:6379/99 (REDIS_URL): "
        "Error 111 connecting to cache:6379."
    )
    no_db = redis_error(s, ResponseError("DB index is out of range"))
    assert isinstance(no_db, ConfigError)
    assert str(no_db).startswith("REDIS_URL: Redis has no database 99 (DB index is out of range)")
    auth = redis_error(s, AuthenticationError("invalid username-password pair"))
    assert isinstance(auth, ConfigError)
    assert str(auth).startswith("REDIS_URL: Redis refused the credentials")
    assert "sekrit" not in str(down) + str(no_db) + str(auth)


def test_sentinel_errors_name_the_service_and_the_database() -> None:
    """With a Sentinel URL, no primary found is one sentence naming the service (not redis-py's
    repr of every sentinel), a database the primary lacks is the URL's database number, and
    sentinels refusing the password are a configuration error, not an outage."""
    s = load_settings(redis_url="redis+sentinel://:sekrit@s1,s2/svc/42?sentinel_password=spw")
    down = redis_error(s, MasterNotFoundError("No master found for 'svc' : <Redis(...)> - ..."))
    assert isinstance(down, RedisUnavailableError)
    assert str(down) == (
        "Redis is unavailable at redis+sentinel://***@s1,s2/svc/42?sentinel_password=*** "
        "(REDIS_URL): no sentinel named a primary for 'svc' (are they up, is the name right?)"
    )
    no_db = redis_error(s, ResponseError("DB index is out of range"))
    assert isinstance(no_db, ConfigError)
    assert str(no_db).startswith("REDIS_URL: Redis has no database 42 (DB index is out of range)")
    refused = redis_error(
        s, MasterNotFoundError("No master found for 'svc' : <R> - AuthenticationError('x')")
    )
    assert isinstance(refused, ConfigError)
    assert str(refused) == (
        "REDIS_URL: the sentinels refused the credentials (sentinel_password, sentinel_username)"
    )
