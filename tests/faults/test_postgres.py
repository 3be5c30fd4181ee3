"""Postgres faults under edits: paused (SIGSTOP) for 20 s, and stopped with `-m immediate` in the
middle of a flush. Both use the session's Postgres (brought back whatever happens) and a private
state Valkey; the api and the flusher are real processes."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from deploy.embedded import Valkey
from shared.store.keys import Keys
from tests.conftest import Servers
from tests.support.faults import (
    Editors,
    account,
    dirty,
    flush_blocked,
    overdue_jobs,
    own_postgres,
    report,
    signal_postgres,
    stack_settings,
    stored,
    team_stack,
    until,
)

pytestmark = pytest.mark.slow

PAUSE_S = 20.0


async def test_postgres_paused_for_20s_loses_nothing_and_edits_flow(
    migrated: Servers, tmp_path: Path, valkey: Valkey
) -> None:
    """A paused database (every Postgres process SIGSTOPped: connections open, nothing answers)
    is worse than a stopped one: nothing is refused, everything waits. The flusher's statement
    timeout (3 s here) and connect timeout must fire, no job may stay stuck, edits (Redis only)
    keep being acknowledged at their usual latency, and after SIGCONT everything lands."""
    postgres = own_postgres(migrated)
    settings = stack_settings(migrated, valkey.url, db_command_timeout_s=3.0)
    async with team_stack(settings, tmp_path, docs=4) as (s, users, doc_ids):
        async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
            ledger = editors.ledger
            await asyncio.sleep(2)
            ledger.phase = "paused"
            paused = signal_postgres(postgres.pgdata, signal.SIGSTOP)
            try:
                await asyncio.sleep(PAUSE_S)
                assert s.flusher.alive, f"flusher died\n{s.flusher.tail()}"
                assert s.api.alive, f"api died\n{s.api.tail()}"
                assert not await s.flusher_ready(), "flusher ready with Postgres paused"
                assert ledger.acks_in["paused"] > 0, "edits stopped with Postgres paused"
            finally:
                signal_postgres(postgres.pgdata, signal.SIGCONT)
            ledger.phase = "recovering"
            marks = {d: ledger.highest(d) for d in doc_ids}

            async def caught_up() -> bool:
                rows = await stored(settings.dsn, doc_ids)
                return all(rows[d][0] >= v for d, v in marks.items())

            took = await until("Postgres to catch up", 15, caught_up, interval=0.1)
            ledger.phase = "steady"
            await asyncio.sleep(1)
            await editors.stop()
        acc = await account(s, users[0], ledger)
        stuck = await overdue_jobs(valkey.url, s.keys)
        report(
            f"Postgres SIGSTOP {PAUSE_S:.0f}s ({paused} processes)",
            1,
            {"paused mid-stream"},
            acc,
            f"{took:.2f}s to catch up",
        )
        print(
            f"edit p99 {ledger.p99('steady') * 1000:.0f} ms steady,"
            f" {ledger.p99('paused') * 1000:.0f} ms paused; answers {dict(ledger.answers)}"
        )
        log = s.flusher.log()
        assert "flush failed" in log, "no timeout fired in the flusher"
        assert acc.lost == 0, acc
        assert stuck == 0
        assert not ledger.refusals, ledger.refusals


@asynccontextmanager
async def durable_commits(dsn: str) -> AsyncIterator[None]:
    """The test Postgres runs with synchronous_commit off (deploy/embedded.py, durable=False): a
    commit may answer before its WAL leaves shared memory, which an immediate stop then loses, so
    Postgres would seem to go backwards by the server's setting, not Redline's doing. This test
    crashes Postgres on purpose, so its database commits durably (new connections: the stack's
    are opened after this), as a production server does."""
    conn = await asyncpg.connect(dsn)
    try:
        db = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{db}" SET synchronous_commit = on')
    finally:
        await conn.close()
    try:
        yield
    finally:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(f'ALTER DATABASE "{db}" RESET synchronous_commit')
        finally:
            await conn.close()


async def test_postgres_immediate_stop_mid_flush_keeps_commits_and_marks(
    migrated: Servers, tmp_path: Path, valkey: Valkey
) -> None:
    """The test holds row locks on half the documents, so a flush batch of those blocks half
    written; Postgres is then stopped with `-m immediate` (a crash: no shutdown checkpoint). What
    was committed before survives (Postgres never goes backwards), the blocked batch's documents
    stay dirty in Redis, and everything lands once Postgres is back."""
    postgres = own_postgres(migrated)
    settings = stack_settings(migrated, valkey.url, flush_batch_size=2)
    async with (
        durable_commits(settings.dsn),
        team_stack(settings, tmp_path, docs=8) as (
            s,
            users,
            doc_ids,
        ),
    ):
        locked = doc_ids[:4]
        async with Editors(s.client, users, doc_ids, per_doc=1) as editors:
            ledger = editors.ledger
            await asyncio.sleep(2)
            async with flush_blocked(settings.dsn, locked):
                committed = await stored(settings.dsn, doc_ids)
                ledger.phase = "postgres down"
                await asyncio.to_thread(postgres.stop, "immediate")
            try:
                # The blocked batch committed nothing: its documents are still marked dirty.
                marked = await _dirty_ids(valkey.url, s.keys, locked)
                assert marked == set(locked), marked
                await asyncio.sleep(1)
                assert s.flusher.alive, f"flusher died\n{s.flusher.tail()}"
            finally:
                if not postgres.is_running():
                    await asyncio.to_thread(postgres.start)
            ledger.phase = "recovering"
            started = time.monotonic()
            rows = await stored(settings.dsn, doc_ids)
            for d in doc_ids:  # never backwards
                assert rows[d][0] >= committed[d][0], (d, rows[d], committed[d])
            await asyncio.sleep(1.5)
            ledger.phase = "steady"
            await editors.stop()
        acc = await account(s, users[0], ledger)
        assert await dirty(valkey.url, s.keys) == 0
        report(
            "Postgres -m immediate mid-flush",
            1,
            {"batch blocked mid-transaction"},
            acc,
            f"{time.monotonic() - started:.2f}s to drain",
        )
        assert acc.lost == 0, acc


async def _dirty_ids(url: str, keys: Keys, doc_ids: list[str]) -> set[str]:
    client = Redis.from_url(url, decode_responses=True)
    try:
        out = set()
        for shard in range(keys.shards):
            out |= set(await client.zrange(keys.dirty(shard), 0, -1))
        return out & set(doc_ids)
    finally:
        await client.aclose()
