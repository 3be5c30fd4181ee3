"""A flusher as one process holds it (its own Postgres pool, bytes client and lease token), for
tests that drive `Flusher` directly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from services.flusher.flush import Flusher
from shared.infra.clients import create_db_pool, redis_client
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.queries import prepare_flush_connection
from shared.store.scripts import Scripts
from shared.store.update_log import UpdateLog, append_options


@asynccontextmanager
async def flusher_of(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Flusher]:
    db = await create_db_pool(settings, init=prepare_flush_connection)
    state_bytes = redis_client(settings.state_url, cluster=settings.redis_cluster, binary=True)
    try:
        updates = UpdateLog(state_bytes, keys, append_options(settings))
        yield Flusher(settings, redis, db, Scripts(redis, keys), keys, updates)
    finally:
        await state_bytes.aclose()
        await db.close()
