"""The HTTP JSON API: `create_app(settings)`; its lifespan alone opens and closes its clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from arq import create_pool
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api import problems
from services.api.bodylimit import BodyLimit
from services.api.collab import Collab
from services.api.deps import request_bodies
from services.api.editlane import EditLane
from services.api.ratelimit import RateLimiter
from services.api.resources import Resources
from services.api.routes import auth, documents, health, jobs, profiles, stats, trending
from services.api.routes import collab as collab_routes
from services.api.routes import console as console_routes
from shared.domain.accounts import Accounts
from shared.domain.coediting import CoEditing
from shared.domain.documents import Documents
from shared.domain.jobs import arq_settings
from shared.domain.profile_cache import ProfileCache
from shared.infra.cache import Cache
from shared.infra.clients import cache_client, create_db_pool, pubsub_client, redis_client
from shared.infra.health import Observability, health_router
from shared.infra.metrics import CacheCounters, DependencyMetrics, HttpMetrics, new_registry
from shared.infra.observer import RequestObserver
from shared.infra.permissions import check_redis_users, service_urls
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts, events_options
from shared.store.update_log import UpdateLog, append_options

log = logging.getLogger("redline.api")

# Answered at keystroke rate: counted in /metrics, access-logged only when they fail (unless
# REDLINE_ACCESS_LOG_EDITS).
QUIET_ROUTES = frozenset({"/v1/documents/{doc_id}/content"})


def openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, completed with what it cannot see: the request bodies the routes
    parse after authenticating (services/api/deps.py) and the problem+json schemas of the
    error responses (services/api/problems.py). Built once, like FastAPI's own."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, routes=app.routes, description=app.description
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(request_bodies(app, document))
        schemas.update(problems.schemas())
        app.openapi_schema = document
    return app.openapi_schema


def create_app(settings: Settings) -> FastAPI:
    settings.require_urls()
    # Built here, not in the lifespan: one registry per app, its metrics registered once.
    registry = new_registry()
    obs = Observability.of(registry, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await check_redis_users(settings, "api", service_urls(settings))
        keys = Keys(settings.key_prefix, settings.doc_shards)
        state = redis_client(settings.state_url, cluster=settings.redis_cluster)
        db = await create_db_pool(settings)
        queue = await create_pool(
            arq_settings(settings.queue_url), default_queue_name=keys.queue_name
        )
        scripts = Scripts(state, keys, **events_options(settings))
        # Yjs updates are bytes: the co-editing scripts run on a client that does not decode.
        state_bytes = redis_client(settings.state_url, cluster=settings.redis_cluster, binary=True)
        # The cache role gets its own client even when it is the same URL: it may be an LRU
        # instance, and a dead cache must not take sessions or edits down with it.
        if settings.redis_cluster and settings.cache_url == settings.state_url:
            log.warning(
                "the cache role points at the Redis Cluster, which the cache client does not"
                " support: profile reads will all go to Postgres; set REDLINE_CACHE_REDIS_URL"
                " to a plain Redis (docs/deploy.md)"
            )
        cache_redis = cache_client(settings.cache_url, settings.cache_timeout_s)
        cache = Cache(
            cache_redis,
            keys,
            lease_ms=settings.cache_lease_ms,
            xfetch_beta=settings.cache_xfetch_beta,
            retry_s=settings.cache_retry_s,
        )
        await cache.start()
        counters = CacheCounters(cache.stats.numbers)
        registry.register(counters)
        updates = UpdateLog(state_bytes, keys, append_options(settings))
        coediting = CoEditing(updates, settings.collab_log_max_entries)
        docs = Documents(settings, state, db, scripts, keys, coediting)
        accounts = Accounts(settings, state, db, keys)
        app.state.resources = Resources(
            settings=settings,
            keys=keys,
            state=state,
            queue=queue,
            db=db,
            accounts=accounts,
            documents=docs,
            limiter=RateLimiter(settings, scripts, keys),
            cache_redis=cache_redis,
            profiles=ProfileCache(settings, cache, db),
            collab=Collab(
                settings,
                accounts,
                docs,
                updates,
                pubsub_client(settings, binary=True),
                keys,
                queue,
                state_bytes,
            ),
        )
        obs.watch(*health.checks(state, queue, db, cache_redis))
        await app.state.resources.collab.start()
        revocations = asyncio.create_task(
            accounts.listen(
                on_revoked=app.state.resources.collab.revoked,
                on_live=app.state.resources.collab.set_live,
            ),
            name="session revocations",
        )
        log.info("api ready")
        try:
            yield
        finally:
            registry.unregister(counters)
            await app.state.resources.collab.stop()
            await cache.close()
            await cache_redis.aclose()
            revocations.cancel()
            await asyncio.gather(revocations, return_exceptions=True)
            await queue.aclose()
            await db.close()
            await state_bytes.aclose()
            await state.aclose()

    app = FastAPI(
        title="Redline",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
    )
    problems.install(app, DependencyMetrics(registry))
    app.openapi = lambda: openapi(app)  # type: ignore[method-assign]
    # Added before BodyLimit, so it runs inside it: the edit lane's bodies are capped the same way.
    app.add_middleware(EditLane, api=app)
    # JSON escaping can double a document's size on the wire; the exact content limit is
    # enforced on the decoded content (shared/domain/documents.py).
    app.add_middleware(BodyLimit, limit=settings.max_document_bytes * 2 + 65_536)
    # Outermost of ours: it times, counts and logs every answer, 413s and 503s included.
    app.add_middleware(
        RequestObserver,
        metrics=HttpMetrics(registry),
        quiet_routes=frozenset() if settings.access_log_edits else QUIET_ROUTES,
    )
    app.include_router(health_router(obs))
    app.include_router(auth.router)
    app.include_router(documents.router)
    app.include_router(jobs.router)
    app.include_router(profiles.router)
    app.include_router(trending.router)
    app.include_router(stats.router)
    if settings.collab_enabled:
        app.include_router(collab_routes.router)
    # The browser console at / (services/api/console/, docs/console.md).
    app.include_router(console_routes.router(settings))
    return app
