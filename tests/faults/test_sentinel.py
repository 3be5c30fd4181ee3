"""A Sentinel failover under edits (issue 13's fault suite): a real primary, a replica and three
sentinels (tests/support/sentinels.py), the real api and flusher processes configured with
REDLINE_REDIS_SENTINELS only (they never see the primary's address), editors keeping a ledger of
every 202. The primary is SIGKILLed; the sentinels promote the replica; the killed primary is then
restarted from its AOF and the sentinels make it a replica of the new one. Then the ledger is
checked against GET and Postgres after the drain: "lost/acked = L/A" (tests/support/faults.py).

With REDLINE_EDIT_MIN_REPLICAS=1 an edit is acknowledged only once the replica holds it, so the
promoted replica holds every acked edit: lost must be 0. Without it, replication is asynchronous:
an edit acked by the primary in the last moments before the kill may not have reached the replica
(Redis documents this window for Sentinel failovers); the test then reports the loss and bounds it
by the edits acked in the second before the kill, and fails if any older edit went missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from tests.conftest import Servers
from tests.support.faults import (
    Editors,
    Ledger,
    account,
    report,
    stack,
    stack_settings,
    team,
    until,
)
from tests.support.sentinels import watched_valkey

pytestmark = pytest.mark.slow

RECOVERY_S = 15.0  # down-after 1 s + election + the clients' reconnects, on a loaded machine


@pytest.mark.parametrize("min_replicas", [1, 0], ids=["min_replicas=1", "min_replicas=0"])
async def test_sentinel_failover_under_edits(
    migrated: Servers, tmp_path: Path, min_replicas: int
) -> None:
    async with watched_valkey(tmp_path / "redis", aof=True) as w:
        settings = stack_settings(
            migrated,
            w.primary.url,
            redis_sentinels=w.hosts,
            edit_min_replicas=min_replicas,
            edit_replica_timeout_ms=500,
        )
        assert settings.state_url.startswith("redis+sentinel://")
        async with stack(settings, tmp_path) as s:
            users, doc_ids = await team(s.client, docs=6)
            async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
                ledger = editors.ledger
                await asyncio.sleep(2)
                acked_last_second = _acked_since(ledger, 1.0)
                old = w.primary.port
                killed = time.monotonic()
                await asyncio.to_thread(w.primary.kill)
                # Answers the api sent before the kill may still be on their way.
                await asyncio.sleep(0.2)
                ledger.phase = "failover"
                first_ack = asyncio.create_task(_first_ack(ledger, ledger.acked, killed))
                failover_s = await until("a failover", RECOVERY_S, lambda: w.failed_over(old))
                # The old primary back from its AOF: the sentinels turn it into a replica of the
                # new one (needed for min_replicas=1 to acknowledge anything again).
                await asyncio.to_thread(w.primary.start)
                first_ack_s = await asyncio.wait_for(first_ack, 30)
                await until("the old primary back as a replica", 30, w.relinked)
                await until("readyz", RECOVERY_S, s.ready)
                await until("the flusher's readyz", RECOVERY_S, s.flusher_ready)
                ledger.phase = "after"
                await asyncio.sleep(2)
                await editors.stop()
            assert s.api.alive, f"api died in the failover\n{s.api.tail()}"
            assert s.flusher.alive, f"flusher died in the failover\n{s.flusher.tail()}"
            # The primary now, whichever it is: the failover away from `old` was proven above,
            # and the sentinels may fail over again once the old primary is back as a replica
            # (seen: the run ended on `old` again), which loses nothing either.
            new = await w.master_port()
            assert new is not None
            # `account` reads the dirty sets with a plain client: point it at the primary.
            plain = dataclasses.replace(
                s, settings=stack_settings(migrated, f"redis://127.0.0.1:{new}/0")
            )
            acc = await account(plain, users[0], ledger)
            report(
                f"Sentinel failover, primary SIGKILL, edit_min_replicas={min_replicas}",
                1,
                {"under edits"},
                acc,
                f"failover {failover_s:.2f}s, first ack after the kill {first_ack_s:.2f}s",
            )
            print(
                f"answers {dict(ledger.answers)}; acks by phase {dict(ledger.acks_in)};"
                f" refusals by phase {dict(ledger.refusals)}"
            )
            assert ledger.acks_in["after"] > 0, "no edit acknowledged after the failover"
            assert not {a for a in ledger.answers if a.startswith("5") and a != "503"}, ledger
            if min_replicas:
                assert acc.lost == 0, f"{acc} {ledger.reissued()[:5]}"
            else:
                # Asynchronous replication: at most what was acked just before the kill.
                assert acc.lost <= acked_last_second, (acc, acked_last_second)


def _acked_since(ledger: Ledger, seconds: float) -> int:
    """An upper bound on the edits acked in the last `seconds` before the kill (the ledger keeps
    no times): the steady phase's rate over its 2 s times the window, plus one per editor in
    flight."""
    return int(ledger.acks_in["steady"] / 2 * seconds) + 1 + 12


async def _first_ack(ledger: Ledger, count: int, since: float) -> float:
    """Seconds from `since` to the first 202 after the ledger held `count`."""
    while True:
        if ledger.acked > count:
            return time.monotonic() - since
        await asyncio.sleep(0.01)
