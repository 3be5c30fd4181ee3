"""The HTTP JSON API: `create_app(settings)`; its lifespan alone opens and closes its clients."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq import create_pool
from fastapi import FastAPI

from services.api import problems
from services.api.bodylimit import BodyLimit
from services.api.ratelimit import RateLimiter
from services.api.resources import Resources
from services.api.routes import auth, documents, health
from shared.accounts import Accounts
from shared.clients import create_db_pool, redis_client
from shared.documents import Documents
from shared.jobs import arq_settings
from shared.keys import Keys
from shared.permissions import check_redis_users, service_urls
from shared.scripts import Scripts
from shared.settings import Settings

log = logging.getLogger("redline.api")


def create_app(settings: Settings) -> FastAPI:
    settings.require_urls()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_redis_users(settings, "api", service_urls(settings))
        keys = Keys(settings.key_prefix, settings.doc_shards)
        state = redis_client(settings.state_url, cluster=settings.redis_cluster)
        pool = await create_db_pool(settings)
        queue = await create_pool(
            arq_settings(settings.queue_url), default_queue_name=keys.queue_name
        )
        scripts = Scripts(state, keys)
        app.state.resources = Resources(
            settings=settings,
            keys=keys,
            state=state,
            queue=queue,
            pool=pool,
            accounts=Accounts(settings, state, pool, keys),
            documents=Documents(settings, state, pool, scripts, keys),
            limiter=RateLimiter(settings, scripts, keys),
        )
        log.info("api ready")
        try:
            yield
        finally:
            await queue.aclose()
            await pool.close()
            await state.aclose()

    app = FastAPI(
        title="Redline",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    problems.install(app)
    # JSON escaping can double a document's size on the wire; the exact content limit is
    # enforced on the decoded content (shared/documents.py).
    app.add_middleware(BodyLimit, limit=settings.max_document_bytes * 2 + 65_536)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(documents.router)
    return app
