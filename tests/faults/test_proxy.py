"""Network faults through a TCP fault proxy of our own (tests/support/faultproxy.py): between both
services and Redis, and between the flusher and Postgres. Each run goes through the same phases:
unreachable (a blackhole: timeouts, not refusals; 10 s for Redis, 5 s for Postgres), back,
300 ms of added round trip, then connection resets; then it checks: no false acknowledgement
(lost/acked), no stuck job, and recovery (readyz ok, edits or flushes flowing) within 5 s of
each return.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from deploy.embedded import Valkey
from tests.conftest import Servers
from tests.support.faultproxy import FaultProxy, fault_proxy
from tests.support.faults import (
    Editors,
    Ledger,
    Stack,
    account,
    overdue_jobs,
    report,
    stack_settings,
    stored,
    team_stack,
    until,
)
from tests.support.users import User

pytestmark = pytest.mark.slow

UNREACHABLE_S = 10.0
# Postgres: shorter (the 20 s SIGSTOP in test_postgres.py covers a long database outage).
PG_UNREACHABLE_S = 5.0
LATENCY_S = 0.15  # each way: 300 ms added to every round trip
LATENCY_PHASE_S = 2.0
RESETS = 5
RECOVERY_S = 5.0
POINTS = {"unreachable 10 s", "300 ms latency", "connection resets"}


async def _faults(
    proxy: FaultProxy,
    ledger: Ledger,
    recovered: Callable[[], Awaitable[bool]],
    while_down: Callable[[], Awaitable[None]],
    on_return: Callable[[], None],
    unreachable_s: float = UNREACHABLE_S,
) -> list[float]:
    """The three faults in turn; returns the recovery times (s) after the outage and resets.
    `on_return` runs as the dependency comes back: what `recovered` then waits for."""
    recoveries = []
    ledger.phase = "unreachable"
    proxy.set("blackhole")
    await asyncio.sleep(unreachable_s)
    await while_down()
    proxy.set("pass")
    on_return()
    ledger.phase = "recovering"
    recoveries.append(await until("recovery after the outage", RECOVERY_S, recovered))

    ledger.phase = "latency"
    proxy.set("pass", latency_s=LATENCY_S)
    await asyncio.sleep(LATENCY_PHASE_S)
    proxy.set("pass")

    ledger.phase = "resets"
    for _ in range(RESETS):
        await asyncio.sleep(0.4)
        proxy.set("reset")
        proxy.set("pass")
    on_return()
    ledger.phase = "recovering"
    recoveries.append(await until("recovery after the resets", RECOVERY_S, recovered))
    ledger.phase = "steady"
    return recoveries


async def test_redis_behind_a_fault_proxy(
    migrated: Servers, tmp_path: Path, valkey: Valkey
) -> None:
    async with fault_proxy("127.0.0.1", valkey.port) as proxy:
        settings = stack_settings(migrated, f"redis://{proxy.url_host}/0")
        async with team_stack(settings, tmp_path, docs=4) as (s, users, doc_ids):
            async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
                ledger = editors.ledger
                await asyncio.sleep(1.5)
                acked: list[int] = []

                async def while_down() -> None:
                    r = await s.client.get("/readyz")
                    assert r.status_code == 503, r.text
                    assert s.flusher.alive, f"flusher died\n{s.flusher.tail()}"
                    assert s.api.alive, f"api died\n{s.api.tail()}"

                async def recovered() -> bool:
                    return await s.ready() and await s.flusher_ready() and ledger.acked > acked[-1]

                recoveries = await _faults(
                    proxy, ledger, recovered, while_down, lambda: acked.append(ledger.acked)
                )
                assert ledger.acks_in["latency"] > 0, "no edit was acked under latency"
                await asyncio.sleep(1)
                await editors.stop()
            await _settled(s, users[0], ledger, valkey.url, "Redis", POINTS, recoveries)
            assert not {a for a in ledger.answers if a.startswith("5") and a != "503"}, ledger
            assert ledger.refusals["unreachable", "503"] > 0, "no edit met the outage"
            assert s.flusher.alive and s.api.alive


async def test_postgres_behind_a_fault_proxy(
    migrated: Servers, tmp_path: Path, valkey: Valkey
) -> None:
    """Only the flusher goes through the proxy: edits are acknowledged all along (they need
    Redis only), and must all land once Postgres is reachable again."""
    host, port = _pg_address(migrated.database_url)
    async with fault_proxy(host, port) as proxy:
        settings = stack_settings(migrated, valkey.url)
        proxied = migrated.database_url.replace(f"{host}:{port}", proxy.url_host)
        flusher_settings = settings.model_copy(
            update={"database_url": proxied, "db_command_timeout_s": 3.0}
        )
        run = team_stack(settings, tmp_path, docs=4, flusher_settings=flusher_settings)
        async with run as (s, users, doc_ids):
            async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
                ledger = editors.ledger
                await asyncio.sleep(1.5)
                marks: list[dict[str, int]] = []

                async def while_down() -> None:
                    assert not await s.flusher_ready(), "flusher ready without Postgres"
                    assert s.flusher.alive, f"flusher died\n{s.flusher.tail()}"
                    assert ledger.acks_in["unreachable"] > 0, "edits stopped without Postgres"

                async def recovered() -> bool:
                    # Ready, and a flush landed what was acked before the return.
                    if not await s.flusher_ready():
                        return False
                    rows = await stored(settings.dsn, doc_ids)
                    return all(rows[d][0] >= v for d, v in marks[-1].items())

                def on_return() -> None:
                    marks.append({d: ledger.highest(d) for d in doc_ids})

                recoveries = await _faults(
                    proxy, ledger, recovered, while_down, on_return, PG_UNREACHABLE_S
                )
                await asyncio.sleep(1)
                await editors.stop()
            points = {"unreachable 5 s", "300 ms latency", "connection resets"}
            await _settled(
                s, users[0], ledger, valkey.url, "Postgres (flusher)", points, recoveries
            )
            assert not ledger.refusals, "an edit was refused though only Postgres was faulted"
            assert s.flusher.alive


async def _settled(
    s: Stack,
    user: User,
    ledger: Ledger,
    direct_url: str,
    what: str,
    points: set[str],
    recoveries: list[float],
) -> None:
    """After the faults and the editors: report lost/acked and the recoveries, and check that
    nothing acknowledged was lost and no job is stuck."""
    acc = await account(s, user, ledger)
    stuck = await _no_stuck_jobs(s, direct_url)
    report(
        f"{what} behind the fault proxy",
        2 + RESETS,
        points,
        acc,
        f"{', '.join(f'{r:.2f}s' for r in recoveries)}",
    )
    print(f"answers {dict(ledger.answers)}; refusals by phase {dict(ledger.refusals)}")
    assert acc.lost == 0, acc
    assert stuck == 0


def _pg_address(url: str) -> tuple[str, int]:
    netloc = httpx.URL(url)
    assert netloc.host and netloc.port
    return netloc.host, netloc.port


async def _no_stuck_jobs(s: Stack, direct_url: str) -> int:
    """After the faults, no job is left overdue in the queue (a claimed job whose bookkeeping
    failed is retried by arq once its in-progress key expires; cron jobs are queued ahead)."""
    deadline = time.monotonic() + 10
    while True:
        n = await overdue_jobs(direct_url, s.keys)
        if n == 0 or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.5)
