"""What the API's lifespan opens and its routes use: one object, on `app.state.resources`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import Redis

from services.api.collab import Collab
from services.api.ratelimit import RateLimiter
from shared.domain.accounts import Accounts
from shared.domain.documents import Documents
from shared.domain.profile_cache import ProfileCache
from shared.settings import Settings
from shared.store.keys import Keys


@dataclass(frozen=True)
class Resources:
    settings: Settings
    keys: Keys
    state: Redis
    queue: ArqRedis
    db: asyncpg.Pool
    accounts: Accounts
    documents: Documents
    limiter: RateLimiter
    cache_redis: Redis
    profiles: ProfileCache
    collab: Collab
