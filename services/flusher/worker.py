"""The flusher's arq worker: cron flushes, immediate per-document flushes, presence sweeps, and a
drain on shutdown. `create_worker(settings)` builds it; `python -m services.flusher` runs it."""

from __future__ import annotations

import logging
import time
from typing import Any

from arq import cron
from arq.worker import Worker, func

from services.flusher.flush import TRANSIENT, Flusher
from shared.clients import create_db_pool, redis_client
from shared.jobs import FLUSH_DOCUMENT, arq_settings
from shared.keys import Keys
from shared.permissions import check_redis_users, service_urls
from shared.queries import prepare_flush_connection
from shared.scripts import Scripts
from shared.settings import Settings

log = logging.getLogger("redline.flusher")

Ctx = dict[str, Any]


def _every(seconds: int) -> dict[str, Any]:
    """arq cron options for "every `seconds`" (Settings guarantees it divides a minute or hour)."""
    if seconds < 60:
        return {"second": set(range(0, 60, seconds))}
    return {"minute": set(range(0, 60, seconds // 60)), "second": 0}


async def startup(ctx: Ctx) -> None:
    settings: Settings = ctx["settings"]
    await check_redis_users(settings, "flusher", service_urls(settings))
    keys = Keys(settings.key_prefix, settings.doc_shards)
    state = redis_client(settings.state_url, cluster=settings.redis_cluster)
    pool = await create_db_pool(settings, init=prepare_flush_connection)
    scripts = Scripts(state, keys)
    ctx.update(
        state=state, pool=pool, keys=keys, flusher=Flusher(settings, state, pool, scripts, keys)
    )
    ctx["scripts"] = scripts
    log.info(
        "flusher ready: every %ss, batches of %d, %d shards",
        settings.flush_interval,
        settings.flush_batch_size,
        settings.doc_shards,
    )


async def shutdown(ctx: Ctx) -> None:
    settings: Settings = ctx["settings"]
    flusher: Flusher | None = ctx.get("flusher")
    try:
        if flusher is not None:
            log.info("draining every dirty document before exit")
            stats = await flusher.flush_with_retry(None, settings.shutdown_drain_s)
            count, _ = await flusher.dirty_count()
            log.info("drained: %d written, %d still dirty", stats.written, count)
    except TRANSIENT as exc:
        # Nothing is lost: the marks stay in Redis and the next flusher to start takes them.
        log.error("drain incomplete (%s); dirty documents stay marked for the next flusher", exc)
    finally:
        if "pool" in ctx:
            await ctx["pool"].close()
        if "state" in ctx:
            await ctx["state"].aclose()


async def flush_dirty(ctx: Ctx) -> dict[str, Any]:
    settings: Settings = ctx["settings"]
    flusher: Flusher = ctx["flusher"]
    started_ms = time.time_ns() // 1_000_000
    # Stop retrying before the next tick, which carries on where this one stopped.
    try:
        stats = await flusher.flush_with_retry(started_ms, max(settings.flush_interval - 0.5, 0.5))
    except TRANSIENT as exc:
        # Already logged per attempt; the marks stay and the next tick retries. No traceback
        # flood while a dependency is down.
        log.warning("flush tick gave up for now: %s: %s", type(exc).__name__, exc)
        return {"read": 0, "written": 0, "batches": 0, "error": str(exc)}
    if stats.read:
        log.info(
            "flushed %d documents (%d rows changed) in %d batches, %.3fs",
            stats.read,
            stats.written,
            stats.batches,
            stats.seconds,
        )
    return {"read": stats.read, "written": stats.written, "batches": stats.batches}


async def flush_document(ctx: Ctx, doc_id: str) -> dict[str, Any]:
    stats = await ctx["flusher"].flush_ids([doc_id])
    return {"read": stats.read, "written": stats.written}


async def sweep_presence(ctx: Ctx) -> int:
    """Drop expired editors; flush each document whose last editor vanished. Returns that count."""
    keys: Keys = ctx["keys"]
    scripts: Scripts = ctx["scripts"]
    now = time.time_ns() // 1_000_000
    async with ctx["state"].pipeline(transaction=False) as pipe:
        for shard in range(keys.shards):
            pipe.zrange(keys.presence(shard), "-inf", now, byscore=True)
        candidates = [doc_id for ids in await pipe.execute() for doc_id in ids]
    emptied = []
    for doc_id in candidates:
        gone, _ = await scripts.presence_leave(doc_id, None, now)
        if gone:
            emptied.append(doc_id)
    if emptied:
        await ctx["flusher"].flush_ids(emptied)
        log.info("presence expired on %d documents; flushed them", len(emptied))
    return len(emptied)


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    settings.require_urls()
    keys = Keys(settings.key_prefix, settings.doc_shards)
    options: dict[str, Any] = dict(
        functions=[func(flush_document, name=FLUSH_DOCUMENT, keep_result=0, max_tries=1000)],
        cron_jobs=[
            cron(flush_dirty, **_every(settings.flush_interval), keep_result=0, unique=True),
            cron(sweep_presence, **_every(settings.presence_sweep_s), keep_result=0, unique=True),
        ],
        queue_name=keys.queue_name,
        redis_settings=arq_settings(settings.queue_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx={"settings": settings},
        max_jobs=4,
        poll_delay=0.1,
        job_timeout=max(settings.flush_interval * 4, 60),
        health_check_key=keys.flusher_health,
    )
    options.update(overrides)
    return Worker(**options)
