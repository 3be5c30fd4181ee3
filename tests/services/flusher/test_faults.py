"""Fault tests of the write-behind path, with real processes (docs/architecture.md, invariant 1).

The API and the flusher run as `python -m services.api` / `python -m services.flusher` against
the session's Valkey and Postgres. Editors drive the API over HTTP on 127.0.0.1 and record every
edit it acknowledges (202); then a process is killed, Postgres is stopped, or the flusher is told
to shut down, and every acknowledged edit must still reach Postgres.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path

import pytest

from deploy.embedded import Valkey, free_port
from tests.conftest import Servers
from tests.support.faultproxy import fault_proxy
from tests.support.faults import (
    Editors,
    Ledger,
    Stack,
    dirty,
    flush_blocked,
    no_refusals,
    own_postgres,
    stack,
    stack_settings,
    stored,
    team,
    team_stack,
    until,
)
from tests.support.processes import Service, log_ready, settings_env
from tests.support.users import User

pytestmark = pytest.mark.slow

LANDING_TIMEOUT_S = 15.0


# Checks (the harness, editors and ledger: tests/support/faults.py) ---------------------------
async def saved_once(s: Stack, user: User, doc_ids: list[str]) -> bool:
    """True once the flusher has saved any of the documents (saved_version > 0)."""
    for doc_id in doc_ids:
        r = await s.client.get(f"/v1/documents/{doc_id}/status", headers=user.auth)
        if r.status_code == 200 and r.json()["saved_version"] > 0:
            return True
    return False


async def check_landed(
    s: Stack, user: User, ledger: Ledger, within_s: float = LANDING_TIMEOUT_S
) -> float:
    """Wait (bounded) until Postgres holds every document's highest acknowledged version, then
    check that nothing acknowledged is missing. Returns how long it took (s)."""
    doc_ids = sorted(ledger.acks)
    started = time.monotonic()
    deadline = started + within_s
    while True:
        rows = await stored(s.settings.dsn, doc_ids)
        behind = [d for d in doc_ids if rows[d][0] < ledger.highest(d)]
        if not behind or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    took = time.monotonic() - started
    lost = sum(1 for d in doc_ids for v, _ in ledger.acks[d] if v > rows[d][0])
    print(f"lost {lost} / acked {ledger.acked} ({len(doc_ids)} documents, landed in {took:.1f}s)")
    assert lost == 0, (
        f"{lost} acknowledged edits never reached Postgres in {within_s:.0f}s:"
        f" {len(behind)} documents behind\n{s.flusher.tail()}"
    )
    for doc_id in doc_ids:
        version, content = rows[doc_id]
        # Every edit was answered, so Redis's newest version is the highest acknowledged one...
        assert version == ledger.highest(doc_id)
        # ...and Postgres holds that edit's content, not another edit's.
        assert content == ledger.content(doc_id, version)

    # The dirty marks go after the commit: every document ends up "saved", none stays dirty.
    async def all_saved() -> bool:
        for doc_id in doc_ids:
            r = await s.client.get(f"/v1/documents/{doc_id}/status", headers=user.auth)
            body = r.json()
            if body["status"] != "saved" or body["version"] != ledger.highest(doc_id):
                return False
        return await dirty(s.settings.state_url, s.keys) == 0

    await until("every document to be marked saved", 5, all_saved)
    return took


async def restarted_after(s: Stack, editors: Editors, acked_at_kill: int, down_s: float) -> Ledger:
    """The flusher was killed when `acked_at_kill` edits were acked: edits go on for `down_s`
    with nobody flushing (and must be accepted), then a new flusher starts; 1.5 s later the
    editors stop. Their ledger."""
    await asyncio.sleep(down_s)
    assert editors.ledger.acked > acked_at_kill, "no edit was accepted without a flusher"
    await s.flusher.start()
    await asyncio.sleep(1.5)
    return await editors.stop()


async def sigterm_drains(flusher: Service) -> None:
    """SIGTERM the flusher: it exits 0, and its log says it drained."""
    flusher.send(signal.SIGTERM)
    code = await flusher.wait(30)
    assert code == 0, f"flusher exited with {code}\n{flusher.tail()}"
    assert "drained" in flusher.log(current_run=True), flusher.tail()


# 1. SIGKILL the flusher ------------------------------------------------------------------------
async def test_sigkill_flusher_under_edits_loses_nothing(migrated: Servers, tmp_path: Path) -> None:
    settings = stack_settings(migrated)
    async with team_stack(settings, tmp_path, docs=6) as (s, users, doc_ids):
        async with Editors(s.client, users, doc_ids, per_doc=2, pause_s=0.01) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            # Somewhere in the flush cycle (1 s): before, during or after a pass.
            await asyncio.sleep(random.uniform(0, 1))
            assert await s.flusher.kill() == -9
            ledger = await restarted_after(s, editors, editors.ledger.acked, down_s=1.5)
        no_refusals(ledger)
        await check_landed(s, users[0], ledger)


async def test_sigkill_flusher_mid_batch_loses_nothing(migrated: Servers, tmp_path: Path) -> None:
    """The kill lands inside a batch, deterministically: the test holds row locks on the
    documents, so the flusher's batch write blocks half done (rows copied, UPDATE waiting, nothing
    committed, dirty marks in Redis) until the flusher is SIGKILLed there."""
    settings = stack_settings(migrated, flush_batch_size=2)
    async with team_stack(settings, tmp_path, docs=16) as (s, users, doc_ids):
        async with Editors(s.client, users, doc_ids, per_doc=1, pause_s=0.02) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            async with flush_blocked(s.settings.dsn, doc_ids):
                assert await s.flusher.kill() == -9
                acked_at_kill = editors.ledger.acked
            ledger = await restarted_after(s, editors, acked_at_kill, down_s=1)
        no_refusals(ledger)
        await check_landed(s, users[0], ledger)


# 2. Postgres down ------------------------------------------------------------------------------
async def test_postgres_down_edits_accepted_and_land_after(
    migrated: Servers, tmp_path: Path
) -> None:
    postgres = own_postgres(migrated)
    settings = stack_settings(migrated)
    async with team_stack(settings, tmp_path, docs=6) as (s, users, doc_ids):
        async with Editors(s.client, users, doc_ids, per_doc=2, pause_s=0.02) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            try:
                await asyncio.to_thread(postgres.stop)
                assert not postgres.running()
                before = editors.ledger.acked
                await asyncio.sleep(10)
                during = editors.ledger.acked - before
                # Refusals are checked once the editors stop; here, that edits were accepted.
                assert during > 0, "no edit was accepted while Postgres was down"
                assert s.flusher.alive, f"the flusher died with Postgres down\n{s.flusher.tail()}"
                assert s.api.alive, f"the api died with Postgres down\n{s.api.tail()}"
                print(f"{during} edits acknowledged while Postgres was down")
            finally:
                # Later tests share this Postgres: bring it back whatever happened.
                if not postgres.running():
                    await asyncio.to_thread(postgres.start)
            await asyncio.sleep(1)
            ledger = await editors.stop()
        no_refusals(ledger)
        took = await check_landed(s, users[0], ledger)
        assert took <= LANDING_TIMEOUT_S


# 3. Shutdown drain ------------------------------------------------------------------------------
async def test_sigterm_drains_every_dirty_document(migrated: Servers, tmp_path: Path) -> None:
    # Cron once an hour (at minute 0): only the shutdown drain can save these edits. Near the
    # top of the hour, wait for it to pass rather than race the cron (arq uses local time).
    now = time.localtime()
    into_hour = now.tm_min * 60 + now.tm_sec
    if into_hour > 3600 - 20:
        await asyncio.sleep(3600 - into_hour + 1)
    settings = stack_settings(migrated, flush_interval=3600)
    async with team_stack(settings, tmp_path, docs=8) as (s, users, doc_ids):
        async with Editors(s.client, users, doc_ids, per_doc=2, pause_s=0.01) as editors:
            await asyncio.sleep(2)
            ledger = await editors.stop()
        no_refusals(ledger)
        assert ledger.acked > 0
        marked = await dirty(s.settings.state_url, s.keys)
        assert marked == len(doc_ids), "something flushed before the shutdown"

        await sigterm_drains(s.flusher)
        # Right after the exit, with no waiting: the drain wrote everything.
        await check_landed(s, users[0], ledger, within_s=0)


async def test_sigterm_mid_batch_drains_and_exits_cleanly(
    migrated: Servers, tmp_path: Path
) -> None:
    """SIGTERM while a batch is stuck half written (the test holds the rows' locks): the
    cancelled batch commits nothing, the drain takes its documents again once the locks go,
    and the flusher exits 0 with everything saved."""
    settings = stack_settings(migrated, flush_batch_size=2)
    async with team_stack(settings, tmp_path, docs=8) as (s, users, doc_ids):
        async with Editors(s.client, users, doc_ids, per_doc=1, pause_s=0.02) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            async with flush_blocked(s.settings.dsn, doc_ids):
                ledger = await editors.stop()
                s.flusher.send(signal.SIGTERM)
                await asyncio.sleep(0.5)  # the drain starts and meets the same locks
                assert s.flusher.alive, f"exited before draining\n{s.flusher.tail()}"
        no_refusals(ledger)
        code = await s.flusher.wait(30)
        assert code == 0, f"flusher exited with {code}\n{s.flusher.tail()}"
        assert "drained" in s.flusher.log(current_run=True), s.flusher.tail()
        await check_landed(s, users[0], ledger, within_s=0)


# 4. Redis going away and coming back (issue 13) ------------------------------------------------
async def test_flusher_started_while_redis_is_down_waits_then_runs(
    migrated: Servers, tmp_path: Path
) -> None:
    """Nothing listens on the Redis port yet: the flusher says so once and waits (it used to
    exit 1); once a Valkey listens there, it starts and is ready within 5 s."""
    valkey = Valkey(tmp_path / "valkey", free_port(), aof=False)
    settings = stack_settings(migrated, valkey.url)
    service = Service(
        "flusher",
        "services.flusher",
        settings_env(settings),
        tmp_path / "flusher.log",
        log_ready("unavailable"),
    )
    try:
        await service.start()
        await asyncio.sleep(2)
        assert service.alive, service.tail()
        assert service.log().count("queue Redis unavailable") == 1, service.tail()
        await asyncio.to_thread(valkey.start)
        started = time.monotonic()
        await until("the flusher ready", 5, lambda: _logged(service, "flusher ready"))
        print(f"flusher ready {time.monotonic() - started:.2f}s after Redis came up")
        assert "queue Redis recovered" in service.log()
    finally:
        await service.terminate()
        valkey.kill()


async def test_sigterm_drains_even_with_the_queue_redis_gone(
    migrated: Servers, tmp_path: Path
) -> None:
    """The queue Redis (behind a proxy) refuses connections; the state Redis and Postgres are up.
    The job loop rides it out, and a SIGTERM still runs the drain (arq's own close() would raise
    on its first queue call and skip it) and exits 0 with every acknowledged edit saved."""
    now = time.localtime()
    if now.tm_min * 60 + now.tm_sec > 3600 - 30:
        await asyncio.sleep(3600 - (now.tm_min * 60 + now.tm_sec) + 1)
    async with fault_proxy("127.0.0.1", _port(migrated.redis_url)) as proxy:
        queue_url = migrated.redis_url.replace(_hostport(migrated.redis_url), proxy.url_host)
        async with stack(stack_settings(migrated, flush_interval=3600), tmp_path) as s:
            s.flusher.env["REDLINE_QUEUE_REDIS_URL"] = queue_url
            await s.flusher.restart()
            users, doc_ids = await team(s.client, docs=4)
            async with Editors(s.client, users, doc_ids, per_doc=1, pause_s=0.01) as editors:
                await asyncio.sleep(1)
                ledger = await editors.stop()
            no_refusals(ledger)
            proxy.set("refuse")
            await until(
                "the outage logged", 10, lambda: _logged(s.flusher, "queue Redis (job loop)")
            )
            assert s.flusher.alive, s.flusher.tail()
            await sigterm_drains(s.flusher)
            await check_landed(s, users[0], ledger, within_s=0)


async def _logged(service: Service, text: str) -> bool:
    return text in service.log(current_run=True)


def _hostport(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]


def _port(url: str) -> int:
    return int(_hostport(url).rsplit(":", 1)[1])
