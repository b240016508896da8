"""The seed tutorial's pattern, as the baseline: gather over the whole batch under
Semaphore(cpu_count * 2), resp.json(), one INSERT per row; run through arq like harvester.

    arq bench.naive.WorkerSettings --burst     (DATABASE_URL, REDIS_URL, HARVESTER_QUEUE)
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import aiohttp
import asyncpg
from arq.connections import RedisSettings

from worker.queue.serialization import deserialize, serialize

TABLE = """
CREATE TABLE IF NOT EXISTS naive_documents (
    id bigserial PRIMARY KEY, job_id text, url text, body jsonb,
    fetched_at timestamptz DEFAULT now()
)
"""


async def naive_fetch(ctx: dict[str, Any], urls: list[str], source: str | None = None) -> int:
    sem = asyncio.Semaphore((os.cpu_count() or 1) * 2)
    pool: asyncpg.Pool = ctx["pool"]

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        async with sem, session.get(url) as resp:
            data = await resp.json()
        await pool.execute(
            "INSERT INTO naive_documents (job_id, url, body) VALUES ($1, $2, $3::jsonb)",
            ctx["job_id"],
            url,
            json.dumps(data),
        )

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, u) for u in urls))
    return len(urls)


async def startup(ctx: dict[str, Any]) -> None:
    ctx["pool"] = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=1, max_size=10)
    await ctx["pool"].execute(TABLE)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["pool"].close()


class WorkerSettings:
    functions = (naive_fetch,)
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://localhost:6379"))
    queue_name = os.environ.get("HARVESTER_QUEUE", "arq:queue")
    job_serializer = staticmethod(serialize)
    job_deserializer = staticmethod(deserialize)
    max_jobs = 10
    job_timeout = 3600
