"""ReplicaWaits (shared/store/replicas.py) against a real Redis with no replica: each round is a
mark and a `WAIT 1 <timeout>` that answers 0 replicas once the timeout passes."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.store.keys import Keys
from shared.store.replicas import ReplicaWaits
from shared.store.scripts import Scripts

TIMEOUT_MS = 50


def counted(scripts: Scripts, rounds: list[int]) -> ReplicaWaits:
    async def wait() -> int:
        rounds.append(1)
        return await scripts.wait_replicas(1, TIMEOUT_MS)

    return ReplicaWaits(wait)


async def test_callers_at_once_share_one_round(redis: Redis, keys: Keys) -> None:
    rounds: list[int] = []
    waits = counted(Scripts(redis, keys), rounds)
    got = await asyncio.gather(*(waits.replicas() for _ in range(20)))
    assert got == [0] * 20
    assert len(rounds) == 1
    assert await redis.exists(keys.replica_mark())


async def test_a_caller_during_a_round_waits_for_the_next(redis: Redis, keys: Keys) -> None:
    """Its write may have come after the running round's mark: only a later mark covers it."""
    rounds: list[int] = []
    waits = counted(Scripts(redis, keys), rounds)
    first = asyncio.create_task(waits.replicas())
    await asyncio.sleep(TIMEOUT_MS / 2000)  # the first round is in its WAIT
    assert len(rounds) == 1
    late = await asyncio.gather(waits.replicas(), waits.replicas())
    assert await first == 0 and list(late) == [0, 0]
    assert len(rounds) == 2


async def test_a_caller_going_away_leaves_the_round_to_the_others(redis: Redis, keys: Keys) -> None:
    rounds: list[int] = []
    waits = counted(Scripts(redis, keys), rounds)
    gone = asyncio.create_task(waits.replicas())
    stays = asyncio.create_task(waits.replicas())
    await asyncio.sleep(0.01)
    gone.cancel()
    assert await stays == 0
    assert gone.cancelled() and len(rounds) == 1


async def test_a_store_down_fails_the_round_for_everyone(keys: Keys) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        waits = ReplicaWaits(lambda: Scripts(dead, keys).wait_replicas(1, TIMEOUT_MS))
        got = await asyncio.gather(waits.replicas(), waits.replicas(), return_exceptions=True)
        assert all(isinstance(e, RedisConnectionError) for e in got), got
        # And the next round runs afresh (it is not stuck on the failed one).
        again = await asyncio.gather(waits.replicas(), return_exceptions=True)
        assert isinstance(again[0], RedisConnectionError)
    finally:
        await dead.aclose()
