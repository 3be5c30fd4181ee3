"""Trending interests: one sorted set per UTC day that expires by itself, so no reset job."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime

from redis.asyncio import Redis

from shared.infra.clock import Clock, now_ms
from shared.store.keys import Keys

# Today's set is read until midnight and yesterday's may still be read a day later.
TRENDING_TTL_S = 2 * 86_400


def today(clock: Clock = now_ms) -> date:
    return datetime.fromtimestamp(clock() / 1000, UTC).date()


async def bump(redis: Redis, keys: Keys, slugs: Iterable[str], day: date | None = None) -> None:
    """Count each interest once in the day's set (called for the shared interests of a match)."""
    key = keys.trending(day or today())
    pipe = redis.pipeline(transaction=False)
    for slug in set(slugs):
        pipe.zincrby(key, 1, slug)
    pipe.expire(key, TRENDING_TTL_S)
    await pipe.execute()


async def top(
    redis: Redis, keys: Keys, limit: int, day: date | None = None
) -> list[tuple[str, float]]:
    """The day's `limit` most counted interests, highest first (ties by slug, descending)."""
    rows = await redis.zrevrange(keys.trending(day or today()), 0, limit - 1, withscores=True)
    return [(str(slug), float(score)) for slug, score in rows]


async def rank(
    redis: Redis, keys: Keys, slug: str, day: date | None = None
) -> tuple[float, int] | None:
    """The interest's score and 1-based rank for the day, or None when not counted that day."""
    key = keys.trending(day or today())
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zscore(key, slug)
        pipe.zrevrank(key, slug)
        score, position = await pipe.execute()
    if score is None or position is None:
        return None
    return float(score), int(position) + 1
