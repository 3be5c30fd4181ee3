"""The matcher: `create_app(settings)`, a FastAPI app serving `/v1/ws/match` and `/v1/ws/events`
(plus health).
Its lifespan alone opens and closes its clients, the pub/sub hub and the pool heartbeat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import Request

from services.matcher.events import EventsEndpoint
from services.matcher.matcher import Matcher
from services.matcher.streams import StreamReader
from shared.accounts import Accounts
from shared.clients import create_db_pool, redis_client
from shared.documents import Documents
from shared.keys import Keys
from shared.scripts import Scripts, events_options
from shared.settings import Settings

log = logging.getLogger("redline.matcher")


def create_app(settings: Settings) -> FastAPI:
    settings.require_urls()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        keys = Keys(settings.key_prefix, settings.doc_shards)
        state = redis_client(settings.state_url)
        pool = await create_db_pool(settings)
        scripts = Scripts(state, keys, **events_options(settings))
        matcher = Matcher(
            settings,
            keys,
            state,
            pool,
            scripts,
            Accounts(settings, state, pool, keys),
            Documents(settings, state, pool, scripts, keys),
        )
        await matcher.start()
        reader = StreamReader(settings.state_url, keys, cluster=settings.redis_cluster)
        await reader.start()
        app.state.matcher = matcher
        app.state.events = EventsEndpoint(matcher, reader)
        log.info("matcher ready")
        try:
            yield
        finally:
            await reader.stop()
            await matcher.stop()
            await pool.close()
            await state.aclose()

    app = FastAPI(title="Redline matcher", version="0.1.0", lifespan=lifespan, openapi_url=None)

    @app.websocket("/v1/ws/match")
    async def match_socket(ws: WebSocket) -> None:
        matcher: Matcher = ws.app.state.matcher
        await matcher.serve(ws)

    @app.websocket("/v1/ws/events")
    async def events_socket(ws: WebSocket) -> None:
        events: EventsEndpoint = ws.app.state.events
        await events.serve(ws)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        matcher: Matcher = request.app.state.matcher

        async def redis_ok() -> bool:
            try:
                return bool(await asyncio.wait_for(matcher.state.ping(), 2))
            except Exception:
                return False

        async def postgres_ok() -> bool:
            try:
                async with asyncio.timeout(2), matcher.db.acquire() as conn:
                    return bool(await conn.fetchval("SELECT 1") == 1)
            except Exception:
                return False

        redis_up, pg_up = await asyncio.gather(redis_ok(), postgres_ok())
        checks = {"redis": "up" if redis_up else "down", "postgres": "up" if pg_up else "down"}
        ready = redis_up and pg_up
        body = {"status": "ready" if ready else "unavailable", "checks": checks}
        body["connections"] = str(len(matcher.hub))
        body["event_streams"] = str(request.app.state.events.streams)
        return JSONResponse(body, 200 if ready else 503)

    return app
