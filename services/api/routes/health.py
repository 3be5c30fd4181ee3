"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import Res

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(res: Res) -> JSONResponse:
    async def redis_ok() -> bool:
        try:
            return bool(await asyncio.wait_for(res.state.ping(), 2))
        except Exception:
            return False

    async def postgres_ok() -> bool:
        try:
            async with asyncio.timeout(2):
                async with res.pool.acquire() as conn:
                    return bool(await conn.fetchval("SELECT 1") == 1)
        except Exception:
            return False

    redis_up, pg_up = await asyncio.gather(redis_ok(), postgres_ok())
    checks = {"redis": "up" if redis_up else "down", "postgres": "up" if pg_up else "down"}
    ready = redis_up and pg_up
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, 200 if ready else 503
    )
