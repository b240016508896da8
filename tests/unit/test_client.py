"""The Redis client harvester builds from REDIS_URL, inspected without connecting."""

from __future__ import annotations

from redis.asyncio.connection import SSLConnection

from worker.queue.client import redis_pool
from worker.settings import load_settings


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
