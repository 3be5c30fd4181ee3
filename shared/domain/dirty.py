"""The dirty-document view both the flusher and the API's stats need: how many documents wait
for a flush, and how long the oldest has waited."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.infra.clock import now_ms
from shared.store.keys import Keys


async def dirty_count(redis: Redis, keys: Keys) -> tuple[int, float | None]:
    """How many documents are dirty, and the age in seconds of the oldest (None if none)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.shards):
            pipe.zcard(keys.dirty(shard))
            pipe.zrange(keys.dirty(shard), 0, 0, withscores=True)
        replies = await pipe.execute()
    count = sum(replies[0::2])
    oldest = [r[0][1] for r in replies[1::2] if r]
    age = (now_ms() - min(oldest)) / 1000 if oldest else None
    return count, age


async def quarantined(redis: Redis, keys: Keys, limit: int = 0) -> tuple[int, list[str]]:
    """How many documents are in quarantine (Postgres refused their content; see
    lua/quarantine.lua), and up to `limit` of their ids, the longest-quarantined first."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.shards):
            pipe.zcard(keys.quarantine(shard))
            if limit:
                pipe.zrange(keys.quarantine(shard), 0, limit - 1, withscores=True)
        replies = await pipe.execute()
    if not limit:
        return sum(replies), []
    oldest = sorted((r for page in replies[1::2] for r in page), key=lambda r: (r[1], r[0]))
    return sum(replies[0::2]), [doc_id for doc_id, _ in oldest[:limit]]
