"""What the API's lifespan opens and its routes use: one object, on `app.state.resources`."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import Redis

from services.api.ratelimit import RateLimiter
from shared.accounts import Accounts
from shared.documents import Documents
from shared.keys import Keys
from shared.metrics import CacheObserver
from shared.settings import Settings


@dataclass(frozen=True)
class Resources:
    settings: Settings
    keys: Keys
    state: Redis
    queue: ArqRedis
    pool: asyncpg.Pool
    accounts: Accounts
    documents: Documents
    limiter: RateLimiter
    cache_metrics: CacheObserver  # hit/miss/fallback per key family, for the profile cache
