"""The flusher's job context as arq would build it, for calling job functions directly (a real
arq Worker in burst mode is avoided: it hung in tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from services.flusher import worker
from services.flusher.context import close_clients
from shared.settings import Settings


@asynccontextmanager
async def worker_context(settings: Settings, **extra: Any) -> AsyncIterator[dict[str, Any]]:
    """`worker.startup` run on a fresh context, whose clients are closed at the end without the
    real shutdown's drain (tests that check the drain call `worker.shutdown` themselves)."""
    context: dict[str, Any] = {"settings": settings, **extra}
    await worker.startup(context)
    try:
        yield context
    finally:
        await close_clients(context)
