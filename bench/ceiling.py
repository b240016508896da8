"""The raw aiohttp ceiling: one process, one session with harvester's connector settings,
N long-lived coroutines, read() + orjson.loads, no Redis, no Postgres.

    python -m bench.ceiling URL_PREFIX COUNT CONCURRENCY [--no-uvloop]
prints one JSON object: {"urls": ..., "seconds": ..., "urls_per_s": ...}.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import orjson


async def run(prefix: str, count: int, concurrency: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=30, connect=10, sock_read=15)
    urls = iter(range(count))
    ok = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def loop() -> None:
            nonlocal ok
            for i in urls:
                async with session.get(f"{prefix}{i}") as resp:
                    body = await resp.read()
                orjson.loads(body)
                ok += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    assert ok == count
    return {"urls": count, "seconds": seconds, "urls_per_s": count / seconds}


def main() -> None:
    prefix, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if "--no-uvloop" not in sys.argv:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    print(orjson.dumps(asyncio.run(run(prefix, count, concurrency))).decode())


if __name__ == "__main__":
    main()
