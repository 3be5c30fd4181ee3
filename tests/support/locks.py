"""Postgres row locks held by a test, to park a flush between its read and its commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from shared.settings import Settings

T = TypeVar("T")


@asynccontextmanager
async def row_locked(settings: Settings, doc_id: str) -> AsyncIterator[None]:
    """Hold the document's row lock: a flush's UPDATE waits on it until the block ends."""
    conn = await asyncpg.connect(settings.dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM documents WHERE id = $1 FOR UPDATE", doc_id)
            yield
    finally:
        await conn.close()


async def blocked_on_lock(settings: Settings, task: Awaitable[T]) -> asyncio.Task[T]:
    """Start `task` and return once it waits on a row lock in Postgres."""
    started = asyncio.ensure_future(task)
    conn = await asyncpg.connect(settings.dsn)
    try:
        for _ in range(200):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
            if waiting:
                return started
            assert not started.done(), "the flush finished without waiting on the lock"
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    raise AssertionError("the flush never waited on the row lock")
