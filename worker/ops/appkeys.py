"""The keys under which `harvester api` keeps its resources on the aiohttp application, shared
by its modules (`worker.ops.api`, `middleware`, `batches`, `dashboard`) without importing one
another."""

from __future__ import annotations

from typing import Final

import asyncpg
from aiohttp import web
from arq.connections import ArqRedis

from worker.ops.connections import ConnectionGuard
from worker.settings import Settings

SETTINGS: Final = web.AppKey("settings", Settings)
REDIS: Final = web.AppKey("redis", ArqRedis)
POOL: Final = web.AppKey("pool", asyncpg.Pool)
CONNECTIONS: Final = web.AppKey("connections", ConnectionGuard)
# The credential profile names, when HARVESTER_CREDENTIALS is set here: a job naming another
# is refused at the door. Without the file, the worker alone can judge its `auth`.
PROFILES: Final = web.AppKey("profiles", frozenset)
