"""The state Valkey SIGKILLed and restarted under a stream of edits (issue 13's fault suite).

A private Valkey per test (the session's is shared), the real api and flusher processes, a few
concurrent editors keeping a ledger of every 202; each scenario prints and asserts
"lost/acked = L/A over N faults at K points" (accounting: tests/support/faults.py).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import Servers
from tests.support.faults import (
    Editors,
    Stack,
    account,
    login,
    read_versions,
    report,
    stack,
    stack_settings,
    state_valkey,
    team,
    until,
    valkey_info,
)

pytestmark = pytest.mark.slow

KILLS = 4  # plus one during BGREWRITEAOF
DOWN_S = 1.0
RECOVERY_S = 5.0


async def _at_phase(third: int) -> str:
    """Sleep into the given third of the 1 s flush cycle (the cron runs on whole seconds, so a
    third is before, around or after a pass); the point's label."""
    await asyncio.sleep(0.3)
    frac = time.time() % 1
    target = (third + random.random()) / 3
    await asyncio.sleep((target - frac) % 1)
    return f"flush cycle third {third + 1}/3"


async def test_state_valkey_sigkill_with_aof_loses_no_acked_edit(
    migrated: Servers, tmp_path: Path
) -> None:
    """AOF with appendfsync everysec: a killed *process* leaves what it wrote in the page cache,
    so every write Valkey accepted is replayed on restart. (Not so when the disk stalls: Valkey
    then postpones its AOF writes up to 2 s while still answering, and a kill loses them; the AOF
    is on a tmpfs here so that only Redline's own path is tested: see `state_valkey`.) Expected:
    lost = 0, and the flusher and the api stay up through every kill."""
    async with state_valkey(tmp_path / "valkey", aof=True) as valkey:
        settings = stack_settings(migrated, valkey.url)
        async with stack(settings, tmp_path) as s:
            users, doc_ids = await team(s.client, docs=6)
            points: set[str] = set()
            recoveries: list[float] = []
            async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
                ledger = editors.ledger
                await asyncio.sleep(1.5)
                for kill in range(KILLS + 1):
                    if kill == KILLS:
                        # A rewrite that lasts (the delay is per key, in µs, and is not
                        # persisted): the kill lands while the child is writing the new AOF.
                        await _bgrewriteaof(valkey.url, key_delay_us=20_000)
                        info = await valkey_info(valkey.url, "persistence")
                        assert info.get("aof_rewrite_in_progress") == 1, info
                        points.add("during BGREWRITEAOF")
                    else:
                        points.add(await _at_phase(kill % 3))
                    ledger.phase = "down"
                    await asyncio.to_thread(valkey.kill)
                    await asyncio.sleep(DOWN_S)
                    readyz = await s.client.get("/readyz")
                    assert readyz.status_code == 503, readyz.text
                    assert s.flusher.alive, f"flusher died with Redis down\n{s.flusher.tail()}"
                    assert s.api.alive, f"api died with Redis down\n{s.api.tail()}"
                    await asyncio.to_thread(valkey.start)
                    ledger.phase = "recovering"
                    acked = ledger.acked
                    took = await until(
                        "readyz and edits again",
                        RECOVERY_S,
                        lambda acked=acked: _recovered(s, editors, acked),
                    )
                    await until("the flusher's readyz", RECOVERY_S, s.flusher_ready)
                    recoveries.append(took)
                    ledger.phase = "steady"
                    assert s.flusher.alive, f"flusher died on Redis's return\n{s.flusher.tail()}"
                await asyncio.sleep(1)
                await editors.stop()
            acc = await account(s, users[0], ledger)
            report(
                "state Valkey SIGKILL, AOF everysec",
                KILLS + 1,
                points,
                acc,
                f"max {max(recoveries):.2f}s",
            )
            print(f"answers {dict(ledger.answers)}; refusals by phase {dict(ledger.refusals)}")
            assert acc.lost == 0, f"{acc} {ledger.reissued()[:5]}"
            # While Redis was down the api said 503 (or the request failed), never a 500.
            assert not {a for a in ledger.answers if a.startswith("5") and a != "503"}, ledger
            assert ledger.answers["503"] > 0, "no edit met the outage: the test proved nothing"
            assert "unavailable" in s.flusher.log() and "recovered" in s.flusher.log()


async def _recovered(s: Stack, editors: Editors, acked: int) -> bool:
    return await s.ready() and editors.ledger.acked > acked


async def _bgrewriteaof(url: str, key_delay_us: int) -> None:
    client = Redis.from_url(url, socket_timeout=2)
    try:
        await client.config_set("rdb-key-save-delay", key_delay_us)
        await client.bgrewriteaof()
        await asyncio.sleep(0.05)  # the fork has started
    finally:
        await client.aclose()


async def test_state_valkey_sigkill_without_persistence_loses_acked_edits(
    migrated: Servers, tmp_path: Path
) -> None:
    """The negative control: the same kill with persistence off (no AOF, no RDB). Valkey comes
    back empty, so every edit acknowledged since the last flush is gone: the write-behind path's
    durability is exactly the state Redis's. With the cron at once an hour nothing was flushed,
    so the loss is all of them, and the test shows it: lost == acked > 0. Documents themselves
    survive (created in Postgres) at their last flushed version, and sessions are gone (401), so
    the users log in again."""
    now = time.localtime()
    into_hour = now.tm_min * 60 + now.tm_sec
    if into_hour > 3600 - 30:
        await asyncio.sleep(3600 - into_hour + 1)
    async with state_valkey(tmp_path / "valkey", aof=False) as valkey:
        settings = stack_settings(migrated, valkey.url, flush_interval=3600)
        async with stack(settings, tmp_path) as s:
            users, doc_ids = await team(s.client, docs=4)
            async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
                await asyncio.sleep(2)
                ledger = await editors.stop()
            assert ledger.acked > 0
            await asyncio.to_thread(valkey.kill)
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(valkey.start)
            took = await until("readyz again", RECOVERY_S, s.ready)
            assert s.flusher.alive, f"flusher died on Redis's return\n{s.flusher.tail()}"
            r = await s.client.get(f"/v1/documents/{doc_ids[0]}", headers=users[0].auth)
            assert r.status_code == 401, "the session survived an empty Redis?"
            owner = await login(s.client, "owner", "correct horse")
            read = await read_versions(s.client, owner, doc_ids)
            lost = sum(1 for d in doc_ids for v, _ in ledger.acks[d] if v > read[d][0])
            print(
                f"state Valkey SIGKILL, no persistence (negative control): lost/acked ="
                f" {lost}/{ledger.acked} over 1 faults at 1 points; recovery {took:.2f}s"
            )
            assert lost == ledger.acked
