"""The keys under which `harvester api` keeps its resources on the aiohttp application, shared
by its modules (`worker.ops.api`, `worker.ops.dashboard`) without importing one another."""

from __future__ import annotations

from typing import Final

import asyncpg
from aiohttp import web
from arq.connections import ArqRedis

from worker.settings import Settings

SETTINGS: Final = web.AppKey("settings", Settings)
REDIS: Final = web.AppKey("redis", ArqRedis)
POOL: Final = web.AppKey("pool", asyncpg.Pool)
