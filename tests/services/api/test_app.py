"""The API's lifespan: it must always end, however soon after it started."""

from __future__ import annotations

import asyncio

from services.api.app import create_app
from shared.settings import Settings


async def test_a_lifespan_ended_right_after_start_does_not_hang(settings: Settings) -> None:
    # The background pub/sub listeners (session revocations, cache wake-ups) are cancelled at
    # shutdown while blocked in a read; redis-py can swallow such a cancel, and the lifespan then
    # waited forever (found when this hung the suite).
    app = create_app(settings)

    async def start_and_stop() -> None:
        async with app.router.lifespan_context(app):
            pass

    for _ in range(3):
        await asyncio.wait_for(start_and_stop(), timeout=10)
