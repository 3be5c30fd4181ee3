"""Flush throughput: a backlog of N dirty documents in Redis, then one timed
`Flusher.flush_dirty()` (services/flusher/flush.py), as the flusher's cron runs it.

Documents are inserted with COPY, seeded into Redis and edited through shared/store/scripts.py,
under a key prefix of their own so that nothing else is dirty when the flush runs.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Sequence

import asyncpg

from bench.meters import CpuMeter
from bench.processes import say
from bench.results import FlushRun
from bench.stack import Stack
from bench.systems import redline_settings
from bench.workload import text
from services.flusher.flush import Flusher
from shared.domain.documents import EditStatus, acl_of
from shared.infra.clients import create_db_pool, redis_client
from shared.infra.clock import now_ms
from shared.store import queries
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from shared.store.update_log import UpdateLog, append_options

PREFIX = "rlflush"
CONCURRENCY = 64


async def gather_bounded(jobs: list[Awaitable[object]]) -> list[object]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(job: Awaitable[object]) -> object:
        async with gate:
            return await job

    return await asyncio.gather(*(one(j) for j in jobs))


async def insert_and_load(
    stack: Stack,
    scripts: Scripts,
    tenant: str,
    title: str,
    contents: list[str],
    loaded: list[str],
    also: Sequence[str] = (),
) -> None:
    """Documents `loaded` and `also` in Postgres (COPY), version 0, document i holding
    contents[i % len(contents)]; `loaded` also seeded into Redis, clean, as a read loads them."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        await queries.insert_tenant(conn, tenant, f"{title} bench")
        await conn.copy_records_to_table(
            "documents",
            records=[
                (uuid.UUID(d), uuid.UUID(tenant), f"{title} {i}", contents[i % len(contents)], 0)
                for i, d in enumerate([*loaded, *also])
            ],
            columns=("id", "tenant_id", "title", "content", "version"),
        )
    finally:
        await conn.close()
    at = str(now_ms())
    base = {"v": "0", "sv": "0", "ti": title, "acl": acl_of(tenant, []), "by": ""}
    await gather_bounded(
        [
            scripts.seed(
                d, {**base, "c": contents[i % len(contents)], "at": at, "ca": at}, 3_600_000
            )
            for i, d in enumerate(loaded)
        ]
    )


async def timed_flush(flusher: Flusher, meter: CpuMeter, kind: str = "text") -> FlushRun:
    """One `flush_dirty()` over whatever is dirty, timed, with the servers' CPU."""
    dirty, _ = await flusher.dirty_count()
    meter.start()
    started = time.perf_counter()
    stats = await flusher.flush_dirty()
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    left, _ = await flusher.dirty_count()
    return FlushRun(
        docs=dirty,
        seconds=seconds,
        docs_per_s=stats.read / seconds if seconds else 0.0,
        batches=stats.batches,
        read=stats.read,
        written=stats.written,
        cleaned=stats.cleaned,
        still_dirty=left,
        cpu_s=cpu,
        kind=kind,
    )


async def run(
    stack: Stack, docs: int, reps: int, content_bytes: int, flush_interval: int, seed: int
) -> list[FlushRun]:
    settings = redline_settings(stack, flush_interval, key_prefix=PREFIX)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    rng = random.Random(seed)
    redis = redis_client(settings.state_url)
    db = await create_db_pool(settings, init=queries.prepare_flush_connection)
    scripts = Scripts(redis, keys)
    state_bytes = redis_client(settings.state_url, binary=True)
    flusher = Flusher(
        settings, redis, db, scripts, keys, UpdateLog(state_bytes, keys, append_options(settings))
    )
    meter = CpuMeter({"postgres": stack.postgres_procs, "redis": stack.valkey_procs})
    out: list[FlushRun] = []
    try:
        tenant = str(uuid.uuid4())
        ids = [str(uuid.uuid4()) for _ in range(docs)]
        contents = [text(rng, content_bytes) for _ in range(16)]
        say(f"flush: inserting {docs:,} documents of {content_bytes} B (COPY) and seeding Redis")
        await insert_and_load(stack, scripts, tenant, "flush", contents, ids)
        author = str(uuid.uuid4())
        for rep in range(reps):
            content = contents[(rep + 1) % 16]
            replies = await gather_bounded(
                [scripts.edit(d, content, None, author, now_ms(), (f"t:{tenant}",)) for d in ids]
            )
            bad = [r for r in replies if getattr(r, "status", None) != EditStatus.APPLIED]
            if bad:
                raise RuntimeError(f"flush backlog: {len(bad)} edits were not applied: {bad[0]}")
            result = await timed_flush(flusher, meter)
            out.append(result)
            say(
                f"flush run {rep + 1}/{reps}: {result.read:,} docs in {result.seconds:.3f}s"
                f" = {result.docs_per_s:,.0f} docs/s ({result.batches} batches,"
                f" {result.written:,} rows written, {result.still_dirty} still dirty)"
            )
    finally:
        await db.close()
        await state_bytes.aclose()
        await redis.aclose()
    return out
