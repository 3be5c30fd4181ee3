"""The matcher: `create_app(settings)`, a FastAPI app serving `/v1/ws/match` and `/v1/ws/events`
(plus health). Its lifespan alone opens and closes its clients, builds the `Resources` both
endpoints are given, and starts and stops the session watcher and the endpoints."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, WebSocket

from services.matcher.events import EventsEndpoint
from services.matcher.match import MatchEndpoint
from services.matcher.resources import Resources
from services.matcher.sessions import SessionWatch
from shared.domain.accounts import Accounts
from shared.domain.documents import Documents
from shared.infra.clients import create_db_pool, redis_client
from shared.infra.health import Observability, health_router, postgres_check, redis_check
from shared.infra.metrics import HttpMetrics, MatcherMetrics, new_registry
from shared.infra.observer import RequestObserver
from shared.infra.permissions import check_redis_users, service_urls
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts, events_options

log = logging.getLogger("redline.matcher")


def create_app(settings: Settings) -> FastAPI:
    settings.require_urls()
    # Built here, not in the lifespan: one registry per app, its metrics registered once.
    registry = new_registry()
    obs = Observability.of(registry, settings)
    metrics = MatcherMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_redis_users(settings, "matcher", service_urls(settings))
        keys = Keys(settings.key_prefix, settings.doc_shards)
        # In cluster mode a RedisCluster; the hub's pub/sub uses a plain connection (hub.py).
        state = redis_client(settings.state_url, cluster=settings.redis_cluster)
        db = await create_db_pool(settings)
        scripts = Scripts(state, keys, **events_options(settings))
        accounts = Accounts(settings, state, db, keys)
        res = Resources(
            settings=settings,
            keys=keys,
            state=state,
            db=db,
            scripts=scripts,
            accounts=accounts,
            documents=Documents(settings, state, db, scripts, keys),
            metrics=metrics,
            sessions=SessionWatch(settings, state, keys, accounts),
        )
        app.state.match = match = MatchEndpoint(res)
        app.state.events = events = EventsEndpoint(res)
        await match.start()
        await res.sessions.start()
        await events.start()
        obs.watch(redis_check("state_redis", state), postgres_check("postgres", db))
        log.info("matcher ready")
        try:
            yield
        finally:
            obs.checks.clear()  # a restarted lifespan (tests) must not probe closed clients
            await events.stop()
            await res.sessions.stop()
            await match.stop()
            await db.close()
            await state.aclose()

    app = FastAPI(title="Redline matcher", version="0.1.0", lifespan=lifespan, openapi_url=None)
    # Request ids for the sockets' logs, and count/latency of the HTTP routes (health, metrics).
    app.add_middleware(RequestObserver, metrics=HttpMetrics(registry))
    app.include_router(health_router(obs))

    @app.websocket("/v1/ws/match")
    async def match_socket(ws: WebSocket) -> None:
        match: MatchEndpoint = ws.app.state.match
        await match.serve(ws)

    @app.websocket("/v1/ws/events")
    async def events_socket(ws: WebSocket) -> None:
        events: EventsEndpoint = ws.app.state.events
        await events.serve(ws)

    return app
