"""Compaction throughput: N co-edited documents, each with a Yjs state and a short update log in
Redis, then one timed `Flusher.flush_dirty()` (it folds every log into its state, writes text and
state in one statement per batch, then trims). Beside it, the bare write of the same rows: the
flusher's own COPY + UPDATE (`queries.write_documents`) in batches of the same size, with no
Redis and no pycrdt, so the ratio says what compaction costs over the SQL it cannot avoid.

Documents are set up under a key prefix of their own (nothing else is dirty), inserted with COPY,
seeded from their text as the api seeds them (`collab.seed_update`), and given `updates` typed
keystrokes each through the append script, as a socket's keystrokes arrive.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime

import asyncpg
from pycrdt import Doc, Text

from bench.backlog import gather_bounded, insert_and_load, timed_flush
from bench.meters import CpuMeter
from bench.processes import say
from bench.results import FlushRun
from bench.stack import Stack
from bench.systems import redline_settings
from bench.workload import text
from services.flusher.flush import Flusher
from shared.domain import collab
from shared.infra.clients import create_db_pool, redis_client
from shared.infra.clock import now_ms
from shared.store import queries
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from shared.store.update_log import AppendStatus, SeedStatus, UpdateLog, append_options

PREFIX = "rlcompact"
CONTENTS = 16  # distinct texts; documents with one text share their keystroke updates


def keystrokes(content: str, client_id: int, count: int, rng: random.Random) -> list[bytes]:
    """`count` one-character updates typed at random places into the seeded `content` by one
    client: valid for every document seeded from that text (the seed's bytes are fixed)."""
    doc: Doc[Text]
    doc, typed = collab.new_doc(collab.seed_update(content), client_id=client_id)
    out = []
    for _ in range(count):
        old = str(typed)
        at = rng.randrange(len(old) + 1)
        out.append(collab.text_update(doc, typed, old[:at] + rng.choice("abcdef") + old[at:]))
    return out


async def seed_all(log: UpdateLog, ids: list[str], seeds: list[bytes], what: str) -> None:
    """Install document i's seed update `seeds[i % len(seeds)]`, as the api seeds on first use."""
    seeded = await gather_bounded(
        [log.seed(d, seeds[i % len(seeds)], 0) for i, d in enumerate(ids)]
    )
    if any(s != SeedStatus.INSTALLED for s in seeded):
        raise RuntimeError(f"{what}: a seed was not installed")


async def type_into(
    log: UpdateLog, ids: list[str], typed: list[list[bytes]], grants: tuple[str, ...], what: str
) -> None:
    """Append to document i the updates `typed[i % len(typed)]`, as a socket's keystrokes, under
    one new author."""
    author = str(uuid.uuid4())
    replies = await gather_bounded(
        [
            log.append(d, u, f"{what}:0", author, now_ms(), grants)
            for i, d in enumerate(ids)
            for u in typed[i % len(typed)]
        ]
    )
    refused = [r for r in replies if getattr(r, "status", None) != AppendStatus.APPENDED]
    if refused:
        raise RuntimeError(f"{what}: {len(refused)} appends refused: {refused[0]}")


async def bare_write(db: asyncpg.Pool, shadows: dict[str, str], batch: int) -> float:
    """Seconds to write the rows the flush just wrote onto their shadows (documents of the same
    size that nothing else touches), with the flusher's statement in batches of its size: the
    floor under compaction's Postgres write. Shadows, so the flushed rows' versions stay as the
    flusher left them."""
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id::text, content, version, ystate, ylog FROM documents"
            " WHERE id = ANY($1::uuid[])",
            list(shadows),
        )
    at = datetime.now(UTC)
    flush_rows: list[queries.FlushRow] = [
        (shadows[r["id"]], r["content"], r["version"], None, at, r["ystate"], r["ylog"])
        for r in rows
    ]
    started = time.perf_counter()
    async with db.acquire() as conn:
        for i in range(0, len(flush_rows), batch):
            await queries.write_documents(conn, flush_rows[i : i + batch])
    return time.perf_counter() - started


async def run(
    stack: Stack,
    docs: int,
    reps: int,
    content_bytes: int,
    updates: int,
    flush_interval: int,
    seed: int,
) -> list[FlushRun]:
    settings = redline_settings(stack, flush_interval, key_prefix=PREFIX)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    rng = random.Random(seed)
    redis = redis_client(settings.state_url)
    state_bytes = redis_client(settings.state_url, binary=True)
    db = await create_db_pool(settings, init=queries.prepare_flush_connection)
    scripts = Scripts(redis, keys)
    log = UpdateLog(state_bytes, keys, append_options(settings))
    flusher = Flusher(settings, redis, db, scripts, keys, log)
    meter = CpuMeter({"postgres": stack.postgres_procs, "redis": stack.valkey_procs})
    out: list[FlushRun] = []
    try:
        tenant = str(uuid.uuid4())
        grants = (f"t:{tenant}",)
        ids = [str(uuid.uuid4()) for _ in range(docs)]
        shadows = {d: str(uuid.uuid4()) for d in ids}
        contents = [text(rng, content_bytes) for _ in range(CONTENTS)]
        say(
            f"compaction: inserting {docs:,} documents of {content_bytes} B (COPY),"
            f" seeding their Yjs state in Redis"
        )
        await insert_and_load(
            stack, scripts, tenant, "compact", contents, ids, also=list(shadows.values())
        )
        await seed_all(log, ids, [collab.seed_update(c) for c in contents], "compaction")
        for rep in range(reps):
            # A new client each round, so every round's keystrokes are new to every document.
            typed = [keystrokes(c, 1000 + rep, updates, rng) for c in contents]
            await type_into(log, ids, typed, grants, "compaction")
            result = await timed_flush(flusher, meter, kind="collab")
            bare = await bare_write(db, shadows, settings.flush_batch_size)
            result.bare_docs_per_s = len(ids) / bare if bare else None
            out.append(result)
            say(
                f"compaction run {rep + 1}/{reps}: {result.read:,} docs with {updates} updates"
                f" each in {result.seconds:.3f}s = {result.docs_per_s:,.0f} docs/s"
                f" ({result.batches} batches, {result.written:,} rows written,"
                f" {result.still_dirty} still dirty);"
                f" bare COPY + UPDATE of the same rows {result.bare_docs_per_s or 0:,.0f} rows/s"
            )
    finally:
        await db.close()
        await state_bytes.aclose()
        await redis.aclose()
    return out
