"""Liveness, readiness and metrics: the shared routes (shared/infra/health.py) with the API's
checks."""

from __future__ import annotations

import asyncpg
from arq.connections import ArqRedis
from redis.asyncio import Redis

from shared.infra.health import Check, postgres_check, redis_check


def checks(state: Redis, queue: ArqRedis, db: asyncpg.Pool, cache_redis: Redis) -> list[Check]:
    """What the API needs to serve: the state Redis (documents, sessions), the queue Redis
    (save-now and leave flushes) and Postgres. The cache Redis is reported but not critical:
    without it profile reads fall back to Postgres, so the API still serves (`degraded`)."""
    return [
        redis_check("state_redis", state),
        redis_check("queue_redis", queue),
        postgres_check("postgres", db),
        redis_check("cache_redis", cache_redis, critical=False),
    ]
