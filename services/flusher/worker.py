"""The flusher's arq worker. Jobs: `flush_dirty` (cron, every flush_interval), `flush_document`
(an immediate, deduplicated flush when the last editor leaves), `save_document` and
`snapshot_document` (users' "save now" and snapshots, results kept for polling),
`sweep_presence` and `warm_profiles` (crons); and a drain on shutdown. `create_worker(settings)`
builds it; `python -m services.flusher` runs it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

from arq import cron
from arq.worker import Worker, func

from services.flusher.context import Ctx, clients, close_clients
from services.flusher.flush import TRANSIENT, Flusher, FlushStats
from services.flusher.probes import ProbeServer
from services.flusher.resilient import ResilientWorker
from services.flusher.saves import save_document, snapshot_document
from services.flusher.warming import warm_profiles
from shared.domain.jobs import (
    FLUSH_DOCUMENT,
    SAVE_DOCUMENT,
    SNAPSHOT_DOCUMENT,
    arq_settings,
    traced,
)
from shared.domain.profile_cache import ProfileCache
from shared.infra.cache import Cache
from shared.infra.clients import cache_client, create_db_pool, redis_client
from shared.infra.clock import now_ms
from shared.infra.dependencies import reason, which
from shared.infra.health import Observability, postgres_check, redis_check
from shared.infra.metrics import DependencyMetrics, FlushMetrics, JobMetrics, new_registry
from shared.infra.permissions import check_redis_users, service_urls
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.queries import prepare_flush_connection
from shared.store.scripts import Scripts, events_options
from shared.store.update_log import UpdateLog, append_options

log = logging.getLogger("redline.flusher")


def _every(seconds: int) -> dict[str, Any]:
    """arq cron options for "every `seconds`" (Settings guarantees it divides a minute or hour)."""
    if seconds < 60:
        return {"second": set(range(0, 60, seconds))}
    return {"minute": set(range(0, 60, seconds // 60)), "second": 0}


def _metrics(ctx: Ctx) -> None:
    """One registry per worker (create_worker builds it; a test calling startup gets its own)."""
    if "registry" not in ctx:
        registry = new_registry()
        ctx.update(
            registry=registry,
            flush_metrics=FlushMetrics(registry),
            job_metrics=JobMetrics(registry),
            dependency_metrics=DependencyMetrics(registry),
        )


async def _observed(ctx: Ctx, kind: str, flush: Awaitable[FlushStats]) -> FlushStats:
    """Await one call into the Flusher, counting what it wrote, how long it took, and failures."""
    metrics: FlushMetrics = ctx["flush_metrics"]
    started = time.perf_counter()
    try:
        stats = await flush
    except Exception:
        metrics.gave_up(kind, time.perf_counter() - started)
        raise
    metrics.flushed(
        kind,
        batches=stats.batches,
        rows=stats.written,
        retries=stats.failures,
        seconds=time.perf_counter() - started,
        quarantined=stats.newly_quarantined,
    )
    return stats


async def _start_probes(ctx: Ctx) -> None:
    """Serve /healthz, /readyz and /metrics on the flusher's own port, on this event loop."""
    settings: Settings = ctx["settings"]
    if settings.flusher_metrics_port == 0:
        return
    flusher: Flusher = ctx["flusher"]
    metrics: FlushMetrics = ctx["flush_metrics"]
    queue_probe = redis_client(settings.queue_url)
    clients(ctx).push_async_callback(queue_probe.aclose)
    obs = Observability.of(ctx["registry"], settings)
    obs.watch(
        redis_check("state_redis", ctx["state"]),
        redis_check("queue_redis", queue_probe),
        postgres_check("postgres", ctx["db"]),
    )

    async def backlog() -> None:
        # At scrape time, not per flush tick: right after a flush the backlog is at its lowest,
        # so a tick-time reading would hide a growing one; and it costs nothing unscraped.
        try:
            metrics.backlog(*await flusher.dirty_count())
            metrics.quarantine(await flusher.quarantine_count())
        except (Exception, asyncio.CancelledError):  # cancelled: the scrape's timeout
            metrics.backlog(None, None)  # unknown, rather than a stale value
            metrics.quarantine(None)
            raise

    obs.on_scrape(backlog)
    server = ProbeServer(obs, settings.flusher_metrics_host, settings.flusher_metrics_port)
    try:
        await server.start()
    except OSError as exc:
        # Flushing matters more than its metrics: keep running, loudly.
        log.error(
            "flusher metrics port %s:%d unavailable (%s); running without it",
            settings.flusher_metrics_host,
            settings.flusher_metrics_port,
            exc,
        )
        return
    # Last in, first out: health and metrics stay up through the drain and stop before the
    # clients they report on.
    clients(ctx).push_async_callback(server.stop)
    ctx["probe_server"] = server


async def startup(ctx: Ctx) -> None:
    settings: Settings = ctx["settings"]
    _metrics(ctx)
    await check_redis_users(settings, "flusher", service_urls(settings))
    opened = clients(ctx)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    ctx["state"] = state = redis_client(settings.state_url, cluster=settings.redis_cluster)
    opened.push_async_callback(state.aclose)
    ctx["db"] = db = await create_db_pool(settings, init=prepare_flush_connection)
    opened.push_async_callback(db.close)
    # Co-edited documents' Yjs states and logs are bytes: read on a client that does not decode.
    state_bytes = redis_client(settings.state_url, cluster=settings.redis_cluster, binary=True)
    opened.push_async_callback(state_bytes.aclose)
    updates = UpdateLog(state_bytes, keys, append_options(settings))
    scripts = Scripts(state, keys, **events_options(settings))
    flusher = Flusher(settings, state, db, scripts, keys, updates)
    ctx.update(keys=keys, scripts=scripts, flusher=flusher, updates=updates)
    # The cache role gets its own client (it may be another, evicting, server).
    ctx["cache_redis"] = cache_redis = cache_client(settings.cache_url, settings.cache_timeout_s)
    opened.push_async_callback(cache_redis.aclose)
    cache = Cache(cache_redis, keys, lease_ms=settings.cache_lease_ms)
    ctx["profiles"] = ProfileCache(settings, cache, db)
    await _start_probes(ctx)
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
            stats = await _observed(
                ctx, "drain", flusher.flush_with_retry(None, settings.shutdown_drain_s)
            )
            # Quarantined documents are not dirty (the flusher moved them out when Postgres
            # refused them), so they never make a drain fail; they stay in Redis for the next.
            count, _ = await flusher.dirty_count()
            held = await flusher.quarantine_count()
            log.info(
                "drained: %d written, %d still dirty, %d in quarantine",
                stats.written,
                count,
                held,
            )
    except TRANSIENT as exc:
        # Nothing is lost: the marks stay in Redis and the next flusher to start takes them.
        log.error("drain incomplete (%s); dirty documents stay marked for the next flusher", exc)
    finally:
        # After the drain, whether it completed or not, and even after a startup that failed
        # half-way (arq runs shutdown then too): every client opened is closed once.
        ctx.pop("probe_server", None)
        await close_clients(ctx)


@traced("flush_dirty")
async def flush_dirty(ctx: Ctx) -> dict[str, Any]:
    settings: Settings = ctx["settings"]
    flusher: Flusher = ctx["flusher"]
    started_ms = now_ms()
    # Stop retrying before the next tick, which carries on where this one stopped.
    try:
        stats = await _observed(
            ctx,
            "cron",
            flusher.flush_with_retry(started_ms, max(settings.flush_interval - 0.5, 0.5)),
        )
    except TRANSIENT as exc:
        # Already logged per attempt; the marks stay and the next tick retries. No traceback
        # flood while a dependency is down.
        log.warning(
            "flush tick gave up for now (%s %s): %s: %s",
            which(exc),
            reason(exc),
            type(exc).__name__,
            exc,
        )
        ctx["job_metrics"].failed("flush_dirty")
        ctx["dependency_metrics"].failed(exc)
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


@traced("flush_urgent")
async def flush_urgent(ctx: Ctx) -> dict[str, Any]:
    """Every second: flush the co-edited documents whose log passed a quarter of a cap, so a hot
    document is folded before its log pushes back on its editors (1013, 429/503). One round trip
    when there are none; a failure waits for the next second (the cron pass retries too)."""
    flusher: Flusher = ctx["flusher"]
    try:
        shards = await flusher.urgent_shards()
        if not shards:  # the usual case: no metrics for a check that found nothing
            return {"read": 0, "written": 0}
        stats = await _observed(ctx, "urgent", flusher.flush_urgent(shards))
    except TRANSIENT as exc:
        log.warning(
            "urgent flush failed (%s: %s); the next second retries", type(exc).__name__, exc
        )
        return {"read": 0, "written": 0}
    if stats.read:
        log.info("flushed %d documents with long logs (%.3fs)", stats.read, stats.seconds)
    return {"read": stats.read, "written": stats.written}


@traced(FLUSH_DOCUMENT)
async def flush_document(ctx: Ctx, doc_id: str) -> dict[str, Any]:
    stats = await _observed(ctx, "document", ctx["flusher"].flush_ids([doc_id]))
    log.info("flushed document %s on request (%d rows changed)", doc_id, stats.written)
    return {"read": stats.read, "written": stats.written}


@traced("sweep_presence")
async def sweep_presence(ctx: Ctx) -> int:
    """Drop expired editors; flush each document whose last editor vanished. Returns that count."""
    keys: Keys = ctx["keys"]
    scripts: Scripts = ctx["scripts"]
    now = now_ms()
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
        await _observed(ctx, "presence", ctx["flusher"].flush_ids(emptied))
        log.info("presence expired on %d documents; flushed them", len(emptied))
    return len(emptied)


def create_worker(settings: Settings, **overrides: Any) -> Worker:
    settings.require_urls()
    keys = Keys(settings.key_prefix, settings.doc_shards)
    ctx: Ctx = {"settings": settings}
    _metrics(ctx)
    options: dict[str, Any] = dict(
        functions=[
            func(flush_document, name=FLUSH_DOCUMENT, keep_result=0, max_tries=1000),
            # Users poll these by job id, so their results are kept; retries are bounded so a
            # job that keeps failing ends `failed` with its reason.
            func(
                save_document,
                name=SAVE_DOCUMENT,
                keep_result=settings.job_result_ttl_s,
                max_tries=settings.job_max_tries,
            ),
            func(
                snapshot_document,
                name=SNAPSHOT_DOCUMENT,
                keep_result=settings.job_result_ttl_s,
                max_tries=settings.job_max_tries,
            ),
        ],
        cron_jobs=[
            cron(flush_dirty, **_every(settings.flush_interval), keep_result=0, unique=True),
            cron(flush_urgent, second=set(range(60)), keep_result=0, unique=True),
            cron(sweep_presence, **_every(settings.presence_sweep_s), keep_result=0, unique=True),
            cron(warm_profiles, **_every(settings.warm_interval_s), keep_result=0, unique=True),
        ],
        queue_name=keys.queue_name,
        redis_settings=arq_settings(settings.queue_url),
        on_startup=startup,
        on_shutdown=shutdown,
        ctx=ctx,
        max_jobs=4,
        poll_delay=settings.job_poll_s,
        job_timeout=max(settings.flush_interval * 4, settings.job_timeout_s),
        health_check_key=keys.flusher_health,
    )
    # A full queue Redis stops arq's crons (enqueueing and starting a job are writes): the flush
    # pass then runs in the job loop itself, on the cron's cadence.
    options["when_full"] = (flush_dirty, settings.flush_interval)
    options.update(overrides)
    # arq's Worker, made to survive the queue Redis going away (services/flusher/resilient.py).
    return ResilientWorker(**options)
