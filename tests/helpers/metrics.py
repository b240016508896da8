"""Reading a worker's Prometheus endpoint in tests."""

from __future__ import annotations

import re

import aiohttp


async def scrape(port: int) -> str | None:
    """The text of ``http://127.0.0.1:<port>/metrics``, or None while nothing answers there."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as r,
        ):
            return await r.text()
    except aiohttp.ClientError:
        return None


def documents_fetched(metrics: str) -> float:
    """The documents fetched with a 2xx, summed over every series that counts them."""
    found = re.findall(
        r'^harvester_fetches_total\{outcome="document",status_class="2xx"\} (\S+)$', metrics, re.M
    )
    return sum(float(v) for v in found)
