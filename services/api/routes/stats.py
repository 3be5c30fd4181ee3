"""GET /v1/stats/cache: the cache's and the write-behind's health at a glance, with a status
(the state Redis's memory included: a full one refuses edits).

The cache counters are this process's (every api process keeps its own); the Redis and queue
numbers are global. Any part that cannot be read is null and makes the status a warning.

An operator surface (shared/infra/health.py `OperatorGate`): with REDLINE_OPERATOR_TOKEN set it
answers only `Authorization: Bearer <operator token>` (no session needed; a signed-in user gets 401,
not a per-process subset: these figures are an operator's dashboard, nothing in them is a user's);
in production without a token it is 403 for everyone; in development and test without a token any
signed-in user reads it, as before."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from services.api.deps import Res, Token
from services.api.problems import responses
from services.api.resources import Resources
from shared.domain import dirty
from shared.domain.accounts import Principal
from shared.domain.errors import Forbidden, Unauthenticated
from shared.domain.models import CacheRedisStats, CacheStatsOut, StateRedisStats
from shared.infra.dependencies import REDIS_DOWN
from shared.infra.health import OperatorGate

router = APIRouter(prefix="/v1/stats", tags=["stats"])
log = logging.getLogger("redline.api")

# Below this many lookups the hit rate says nothing yet.
MIN_LOOKUPS = 100
# Quarantined ids read (longest-quarantined first) to pick those the caller may see.
QUARANTINE_IDS = 50


async def _viewer(token: Token, res: Res) -> Principal | None:
    """Who reads the stats: while operator surfaces are open (development, no operator token)
    any signed-in user; otherwise only the operator token's holder (None: sees everything)."""
    gate = OperatorGate.of(res.settings)
    if gate.open:
        return await res.accounts.resolve(token)
    denied = gate.denial_of(token)
    if denied is not None:
        raise (Forbidden if denied[0] == 403 else Unauthenticated)(denied[1])
    return None


Viewer = Annotated[Principal | None, Depends(_viewer)]


async def _cache_redis(res: Resources) -> CacheRedisStats:
    try:
        async with asyncio.timeout(2):
            return CacheRedisStats(up=True, **await res.profiles.cache.info())
    except REDIS_DOWN as exc:
        log.info("stats: cache Redis unreachable: %r", exc)
        return CacheRedisStats(up=False)


def _fill(memory: dict[str, Any]) -> float:
    """used / maxmemory of one node's INFO memory; 0 without a maxmemory."""
    cap = int(memory.get("maxmemory", 0))
    return int(memory.get("used_memory", 0)) / cap if cap else 0.0


async def _state_redis(res: Resources) -> StateRedisStats:
    try:
        async with asyncio.timeout(2):
            memory: dict[str, Any] = await res.state.info("memory")
    except REDIS_DOWN as exc:
        log.info("stats: state Redis unreachable: %r", exc)
        return StateRedisStats(up=False)
    # A cluster client answers per node: report the fullest one.
    nodes = list(memory.values()) if all(isinstance(v, dict) for v in memory.values()) else [memory]
    fullest = max(nodes, key=_fill)
    return StateRedisStats(
        up=True,
        used_memory_bytes=int(fullest.get("used_memory", 0)),
        maxmemory_bytes=int(fullest.get("maxmemory", 0)),
        maxmemory_policy=str(fullest.get("maxmemory_policy", "")) or None,
    )


async def _dirty(res: Resources) -> tuple[int, float | None] | None:
    try:
        async with asyncio.timeout(2):
            return await dirty.dirty_count(res.state, res.keys)
    except REDIS_DOWN as exc:
        log.info("stats: state Redis unreachable: %r", exc)
        return None


async def _quarantine(res: Resources, who: Principal | None) -> tuple[int, list[str]] | None:
    """The quarantine's size, and the ids in it the caller may open: another tenant's document
    ids are never shown to a user (their count is, as the dirty count is); the operator (None)
    sees them all."""
    try:
        async with asyncio.timeout(2):
            count, ids = await dirty.quarantined(res.state, res.keys, QUARANTINE_IDS)
            if who is None:
                return count, ids
            return count, [d for d in ids if await res.documents.readable(who, d)]
    except REDIS_DOWN as exc:
        log.info("stats: state Redis unreachable: %r", exc)
        return None


async def _queue_depth(res: Resources) -> int | None:
    try:
        async with asyncio.timeout(2):
            return int(await res.queue.zcard(res.keys.queue_name))
    except REDIS_DOWN as exc:
        log.info("stats: queue Redis unreachable: %r", exc)
        return None


def _state_warnings(res: Resources, state: StateRedisStats) -> list[str]:
    if not state.up:
        return []  # said once, by the dirty count
    warnings = []
    if state.maxmemory_bytes and state.used_memory_bytes is not None:
        used = state.used_memory_bytes / state.maxmemory_bytes
        if used >= 1:
            warnings.append(
                "state Redis full (maxmemory reached): edits answer 503 until memory frees"
                " (clean documents expire, or raise maxmemory); nothing saved is lost"
            )
        elif used > res.settings.stats_max_memory_ratio:
            warnings.append(f"state Redis at {used:.0%} of maxmemory: edits stop when it is full")
    if state.maxmemory_policy not in (None, "noeviction"):
        warnings.append(
            f"state Redis maxmemory-policy is {state.maxmemory_policy}: it may evict documents"
            " not yet saved; set noeviction"
        )
    return warnings


def _warnings(res: Resources, out: dict[str, Any], redis: CacheRedisStats) -> list[str]:
    s = res.settings
    warnings = []
    lookups = sum(f["hits"] + f["negative_hits"] + f["misses"] for f in out["families"].values())
    rate = out["hit_rate"]
    if rate is not None and lookups >= MIN_LOOKUPS and rate < s.stats_min_hit_rate:
        warnings.append(f"cache hit rate {rate:.2f} below {s.stats_min_hit_rate}")
    if not redis.up:
        warnings.append("cache Redis unreachable: reads go to Postgres")
    elif redis.maxmemory_bytes and redis.used_memory_bytes is not None:
        used = redis.used_memory_bytes / redis.maxmemory_bytes
        if used > s.stats_max_memory_ratio:
            warnings.append(f"cache Redis at {used:.0%} of maxmemory")
    if not out["cache_listener"]:
        warnings.append("cache listener not subscribed: waiting readers fall back on timeouts")
    if out["dirty_documents"] is None:
        warnings.append("state Redis unreachable: dirty documents unknown")
    elif (out["oldest_dirty_age_s"] or 0) > s.stats_max_dirty_age_s:
        warnings.append(f"oldest dirty document older than {s.stats_max_dirty_age_s:g}s")
    if out["quarantined_documents"]:
        warnings.append(
            f"{out['quarantined_documents']} document(s) quarantined: Postgres refused their"
            " content, so they are kept in Redis, unsaved, until an edit replaces it"
            " (the flusher's log names each with the error)"
        )
    if out["queue_depth"] is None:
        warnings.append("queue Redis unreachable")
    elif out["queue_depth"] > s.stats_max_queue_depth:
        warnings.append(f"job queue deeper than {s.stats_max_queue_depth}")
    return warnings


@router.get("/cache", response_model=CacheStatsOut, responses=responses(401, 403, 503))
async def cache_stats(who: Viewer, res: Res) -> CacheStatsOut:
    redis, state, dirt, depth, held = await asyncio.gather(
        _cache_redis(res), _state_redis(res), _dirty(res), _queue_depth(res), _quarantine(res, who)
    )
    cache = res.profiles.cache
    out: dict[str, Any] = {
        "hit_rate": cache.stats.hit_rate(),
        "families": cache.stats.numbers(),
        "cache_listener": cache.listening,
        "dirty_documents": None if dirt is None else dirt[0],
        "oldest_dirty_age_s": None if dirt is None else dirt[1],
        "quarantined_documents": None if held is None else held[0],
        "quarantined_ids": [] if held is None else held[1],
        "queue_depth": depth,
    }
    warnings = _warnings(res, out, redis) + _state_warnings(res, state)
    return CacheStatsOut(
        status="warning" if warnings else "healthy",
        warnings=warnings,
        cache_redis=redis,
        state_redis=state,
        **out,
    )
