from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis, create_pool
from redis.asyncio import Redis

from services.flusher.flush import Flusher
from shared.domain.jobs import arq_settings
from shared.settings import Settings
from shared.store.keys import Keys
from tests.support.flushers import flusher_of
from tests.support.worker import worker_context


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The worker's job context, for calling its job functions directly."""
    async with worker_context(settings) as context:
        yield context


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[ArqRedis]:
    queue = await create_pool(arq_settings(settings.queue_url))
    yield queue
    await queue.aclose()


@pytest.fixture
async def flusher(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Flusher]:
    async with flusher_of(settings, redis, keys) as flusher:
        yield flusher


@pytest.fixture
async def second_flusher(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Flusher]:
    """Another flusher process's worth of state: its own Postgres pool and lease token."""
    async with flusher_of(settings, redis, keys) as flusher:
        yield flusher
