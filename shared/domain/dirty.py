"""The dirty-document view both the flusher and the API's stats need: how many documents wait
for a flush, and how long the oldest has waited."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.infra.clock import now_ms
from shared.store.keys import Keys

# A co-edited document whose update log has passed a quarter of either cap (collab_append.lua)
# has its dirty score moved back by this much: it sorts before every other dirty document (in
# first-dirty order among themselves), the cron pass takes it first, and the urgent pass, every
# second, claims only scores below zero, so a hot document is folded long before its log would
# push back on its editors. The script uses the same number.
URGENT_SHIFT_MS = 10**13
URGENT_UNTIL_MS = -1  # the urgent pass claims scores up to this


def first_dirty_ms(score: float) -> float:
    """When a document became dirty, from its dirty score (urgent or not)."""
    return score + URGENT_SHIFT_MS if score < 0 else score


async def dirty_count(redis: Redis, keys: Keys) -> tuple[int, float | None]:
    """How many documents are dirty, and the age in seconds of the oldest (None if none)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.shards):
            pipe.zcard(keys.dirty(shard))
            # The lowest score, and the lowest that is not urgent: either may be the oldest.
            pipe.zrange(keys.dirty(shard), 0, 0, withscores=True)
            pipe.zrangebyscore(keys.dirty(shard), 0, "+inf", start=0, num=1, withscores=True)
        replies = await pipe.execute()
    count = sum(replies[0::3])
    oldest = [first_dirty_ms(r[0][1]) for page in (1, 2) for r in replies[page::3] if r]
    age = (now_ms() - min(oldest)) / 1000 if oldest else None
    return count, age


async def urgent_shards(redis: Redis, keys: Keys) -> list[int]:
    """The shards that hold an urgent document (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for shard in range(keys.shards):
            pipe.zcount(keys.dirty(shard), "-inf", URGENT_UNTIL_MS)
        replies = await pipe.execute()
    return [shard for shard, n in enumerate(replies) if n]


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
