"""The dirty-document view both the flusher and the API's stats need: how many documents wait
for a flush, and how long the oldest has waited."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from shared.keys import Keys


async def dirty_count(redis: Redis, keys: Keys) -> tuple[int, float | None]:
    """How many documents are dirty, and the age in seconds of the oldest (None if none)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.shards):
            pipe.zcard(keys.dirty(shard))
            pipe.zrange(keys.dirty(shard), 0, 0, withscores=True)
        replies = await pipe.execute()
    count = sum(replies[0::2])
    oldest = [r[0][1] for r in replies[1::2] if r]
    age = (time.time() * 1000 - min(oldest)) / 1000 if oldest else None
    return count, age
