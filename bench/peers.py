"""The two peers Redline is measured against, each served like Redline's api (uvicorn, one worker,
no access log, same Redis and Postgres client settings):

- naive:   PUT /v1/documents/{id}/content does one asyncpg UPDATE of the row (write-through);
- ceiling: PUT /v1/documents/{id}/content does one Redis SET of the body (the least any edit
           endpoint can do).

Run one with `python -m bench.peers naive|ceiling`; it reads REDLINE_REDIS_URL,
REDLINE_DATABASE_URL and REDLINE_API_PORT like the api does.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from shared.infra.clients import create_db_pool, redis_client
from shared.infra.logs import configure_logging
from shared.settings import Settings

# The naive peer's table: the same shape (columns, defaults, checks, indexes) as Redline's.
NAIVE_DDL = (
    "CREATE SCHEMA IF NOT EXISTS naive;"
    " CREATE TABLE IF NOT EXISTS naive.documents (LIKE public.documents INCLUDING ALL)"
)
NAIVE_FILL = "INSERT INTO naive.documents SELECT * FROM public.documents ON CONFLICT DO NOTHING"
NAIVE_UPDATE = (
    "UPDATE naive.documents SET content = $2, version = version + 1, updated_at = now()"
    " WHERE id = $1 RETURNING version"
)
CEILING_PREFIX = "bench:ceiling:"


class ContentIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    content: str
    base_version: int | None = None


def naive_app(settings: Settings) -> FastAPI:
    db: asyncpg.Pool | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal db
        db = await create_db_pool(settings)
        try:
            yield
        finally:
            await db.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.put("/v1/documents/{doc_id}/content", status_code=202)
    async def edit(doc_id: UUID, request: Request) -> JSONResponse:
        body = ContentIn.model_validate_json(await request.body())
        assert db is not None
        version = await db.fetchval(NAIVE_UPDATE, doc_id, body.content)
        if version is None:
            return JSONResponse({"detail": "not found"}, 404)
        out = {"id": str(doc_id), "version": version, "saved_version": version, "status": "saved"}
        return JSONResponse(out, 202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def ceiling_app(settings: Settings) -> FastAPI:
    redis: Redis | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal redis
        redis = redis_client(settings.state_url)
        try:
            yield
        finally:
            await redis.aclose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.put("/v1/documents/{doc_id}/content", status_code=202)
    async def edit(doc_id: UUID, request: Request) -> JSONResponse:
        assert redis is not None
        await redis.set(CEILING_PREFIX + str(doc_id), await request.body())
        return JSONResponse({"id": str(doc_id)}, 202)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


APPS = {"naive": naive_app, "ceiling": ceiling_app}


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in APPS:
        raise SystemExit(f"usage: python -m bench.peers {'|'.join(APPS)}")
    settings = Settings()
    settings.require_urls()
    configure_logging(settings.log_level)
    uvicorn.run(
        APPS[argv[0]](settings),
        host="127.0.0.1",
        port=settings.api_port,
        log_config=None,
        access_log=False,
        ws="none",
    )


if __name__ == "__main__":
    main(sys.argv[1:])
