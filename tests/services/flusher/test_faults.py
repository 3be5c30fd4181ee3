"""Fault tests of the write-behind path, with real processes (docs/architecture.md, invariant 1).

The API and the flusher run as `python -m services.api` / `python -m services.flusher` against
the session's Valkey and Postgres. Editors drive the API over HTTP on 127.0.0.1 and record every
edit it acknowledges (202); then a process is killed, Postgres is stopped, or the flusher is told
to shut down, and every acknowledged edit must still reach Postgres.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import Valkey, free_port
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.support.faultproxy import fault_proxy
from tests.support.processes import Service, http_ready, log_ready, running, settings_env
from tests.support.users import User, add_member, create_doc, signup

pytestmark = pytest.mark.slow

# A paragraph, so each edit carries a realistic body; the edit's own label goes first.
FILLER = "The quick brown fox jumps over the lazy dog. " * 10
LANDING_TIMEOUT_S = 15.0


# The stack under test ------------------------------------------------------------------------
@dataclass
class Stack:
    settings: Settings
    keys: Keys
    api: Service
    flusher: Service
    client: httpx.AsyncClient
    redis: Redis


def stack_settings(servers: Servers, **overrides: object) -> Settings:
    """The test suite's settings (so key prefix and shard count agree with the fixtures), plus
    what the processes need: their own port, no login throttling, and short leases and drains
    so that recovery fits the test's time bounds."""
    values: dict[str, object] = dict(
        api_port=free_port(),
        login_rate=100_000,
        # A killed flusher's shard leases block the next flusher until they expire.
        flush_lease_ms=2000,
        flush_retry_max_s=1.0,
        shutdown_drain_s=15.0,
    )
    values.update(overrides)
    return make_settings(servers, **values)


@asynccontextmanager
async def stack(servers: Servers, log_dir: Path, **overrides: object) -> AsyncIterator[Stack]:
    settings = stack_settings(servers, **overrides)
    env = settings_env(settings)
    base = f"http://127.0.0.1:{settings.api_port}"
    async with (
        running("api", "services.api", env, log_dir, http_ready(f"{base}/readyz")) as api,
        running("flusher", "services.flusher", env, log_dir, log_ready("flusher ready")) as flusher,
        httpx.AsyncClient(base_url=base, timeout=10) as client,
    ):
        redis = Redis.from_url(settings.state_url, decode_responses=True)
        try:
            keys = Keys(settings.key_prefix, settings.doc_shards)
            yield Stack(settings, keys, api, flusher, client, redis)
        finally:
            await redis.aclose()


# Editors and what they were told ------------------------------------------------------------
@dataclass
class Ledger:
    """Every acknowledged edit, and every edit that was not acknowledged (and why)."""

    acked: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    contents: dict[tuple[str, int], str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)

    def ack(self, doc_id: str, version: int, content: str) -> None:
        self.acked[doc_id].append(version)
        self.contents[doc_id, version] = content

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def highest(self, doc_id: str) -> int:
        return max(self.acked[doc_id], default=0)


class Editors:
    """Concurrent editors, each typing into one document until stopped (bounded by `limit_s`)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        users: list[User],
        doc_ids: list[str],
        per_doc: int = 2,
        pause_s: float = 0.01,
        limit_s: float = 90.0,
    ) -> None:
        self.client = client
        self.ledger = Ledger()
        self._stop = asyncio.Event()
        self._deadline = time.monotonic() + limit_s
        self._pause_s = pause_s
        self._tasks = [
            asyncio.create_task(self._type(users[i % len(users)], doc_id, f"editor{i}"))
            for i, doc_id in enumerate(d for d in doc_ids for _ in range(per_doc))
        ]

    async def _type(self, user: User, doc_id: str, name: str) -> None:
        n = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            n += 1
            content = f"{name} edit {n}\n{FILLER}"
            try:
                r = await self.client.put(
                    f"/v1/documents/{doc_id}/content", json={"content": content}, headers=user.auth
                )
            except httpx.HTTPError as exc:
                self.ledger.refused.append(f"{type(exc).__name__}: {exc}")
            else:
                if r.status_code == 202:
                    self.ledger.ack(doc_id, r.json()["version"], content)
                else:
                    self.ledger.refused.append(f"{r.status_code} {r.text[:300]}")
            await asyncio.sleep(self._pause_s)

    async def stop(self) -> Ledger:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.ledger

    async def __aenter__(self) -> Editors:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def team(client: httpx.AsyncClient, docs: int) -> tuple[list[User], list[str]]:
    """An owner and a member of one tenant, and `docs` documents they both edit."""
    owner = await signup(client, "owner")
    member = await add_member(client, owner, "member")
    ids = [(await create_doc(client, owner, f"doc {i}"))["id"] for i in range(docs)]
    return [owner, member], ids


# Checks ---------------------------------------------------------------------------------------
async def until(
    what: str, within_s: float, check: Callable[[], Awaitable[bool]], interval: float = 0.1
) -> None:
    """Await `check()` until it is true; fail after `within_s` seconds."""
    deadline = time.monotonic() + within_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def saved_once(s: Stack, user: User, doc_ids: list[str]) -> bool:
    """True once the flusher has saved any of the documents (saved_version > 0)."""
    for doc_id in doc_ids:
        r = await s.client.get(f"/v1/documents/{doc_id}/status", headers=user.auth)
        if r.status_code == 200 and r.json()["saved_version"] > 0:
            return True
    return False


async def stored_rows(dsn: str, doc_ids: list[str]) -> dict[str, tuple[int, str]]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, version, content FROM documents WHERE id = any($1::uuid[])",
            doc_ids,
        )
    finally:
        await conn.close()
    return {r["id"]: (r["version"], r["content"]) for r in rows}


async def dirty_count(s: Stack) -> int:
    counts = [await s.redis.zcard(s.keys.dirty(shard)) for shard in range(s.keys.shards)]
    return sum(counts)


async def check_landed(
    s: Stack, user: User, ledger: Ledger, within_s: float = LANDING_TIMEOUT_S
) -> float:
    """Wait (bounded) until Postgres holds every document's highest acknowledged version, then
    check that nothing acknowledged is missing. Returns how long it took (s)."""
    doc_ids = sorted(ledger.acked)
    started = time.monotonic()
    deadline = started + within_s
    while True:
        stored = await stored_rows(s.settings.dsn, doc_ids)
        behind = [d for d in doc_ids if stored[d][0] < ledger.highest(d)]
        if not behind or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    took = time.monotonic() - started
    lost = sum(1 for d in doc_ids for v in ledger.acked[d] if v > stored[d][0])
    print(f"lost {lost} / acked {ledger.total} ({len(doc_ids)} documents, landed in {took:.1f}s)")
    assert lost == 0, (
        f"{lost} acknowledged edits never reached Postgres in {within_s:.0f}s:"
        f" {len(behind)} documents behind\n{s.flusher.tail()}"
    )
    for doc_id in doc_ids:
        version, content = stored[doc_id]
        # Every edit was answered, so Redis's newest version is the highest acknowledged one...
        assert version == ledger.highest(doc_id)
        # ...and Postgres holds that edit's content, not another edit's.
        assert content == ledger.contents[doc_id, version]

    # The dirty marks go after the commit: every document ends up "saved", none stays dirty.
    async def all_saved() -> bool:
        for doc_id in doc_ids:
            r = await s.client.get(f"/v1/documents/{doc_id}/status", headers=user.auth)
            body = r.json()
            if body["status"] != "saved" or body["version"] != ledger.highest(doc_id):
                return False
        return await dirty_count(s) == 0

    await until("every document to be marked saved", 5, all_saved)
    return took


def no_refusals(ledger: Ledger) -> None:
    assert not ledger.refused, (
        f"{len(ledger.refused)} edits were not acknowledged, e.g. {ledger.refused[:5]}"
    )


# 1. SIGKILL the flusher ------------------------------------------------------------------------
async def test_sigkill_flusher_under_edits_loses_nothing(migrated: Servers, tmp_path: Path) -> None:
    async with stack(migrated, tmp_path) as s:
        users, doc_ids = await team(s.client, docs=6)
        async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            # Somewhere in the flush cycle (1 s): before, during or after a pass.
            await asyncio.sleep(random.uniform(0, 1))
            assert await s.flusher.kill() == -9
            acked_at_kill = editors.ledger.total
            await asyncio.sleep(1.5)  # edits go on, with nobody flushing
            assert editors.ledger.total > acked_at_kill, "no edit was accepted without a flusher"
            await s.flusher.start()
            await asyncio.sleep(1.5)
            ledger = await editors.stop()
        no_refusals(ledger)
        await check_landed(s, users[0], ledger)


async def test_sigkill_flusher_mid_batch_loses_nothing(migrated: Servers, tmp_path: Path) -> None:
    """The kill lands inside a batch, deterministically: the test holds row locks on the
    documents, so the flusher's batch write blocks half done (rows copied, UPDATE waiting, nothing
    committed, dirty marks in Redis) until the flusher is SIGKILLed there."""
    async with stack(migrated, tmp_path, flush_batch_size=2) as s:
        users, doc_ids = await team(s.client, docs=16)
        async with Editors(s.client, users, doc_ids, per_doc=1, pause_s=0.02) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            locker = await asyncpg.connect(s.settings.dsn, timeout=5)
            # pg_stat_activity is a per-transaction snapshot: watch it from another connection.
            watcher = await asyncpg.connect(s.settings.dsn, timeout=5)
            try:
                async with locker.transaction():
                    await locker.execute(
                        "SELECT 1 FROM documents WHERE id = any($1::uuid[]) FOR UPDATE", doc_ids
                    )
                    await until("a flush blocked on our locks", 10, lambda: _blocked(watcher))
                    assert await s.flusher.kill() == -9
                    acked_at_kill = editors.ledger.total
            finally:
                await locker.close()
                await watcher.close()
            await asyncio.sleep(1)  # edits go on, with nobody flushing
            assert editors.ledger.total > acked_at_kill, "no edit was accepted without a flusher"
            await s.flusher.start()
            await asyncio.sleep(1.5)
            ledger = await editors.stop()
        no_refusals(ledger)
        await check_landed(s, users[0], ledger)


async def _blocked(conn: asyncpg.Connection) -> bool:
    """True when some session's UPDATE of documents waits on a lock (the test's)."""
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query ILIKE 'update documents%'"
    )
    return bool(waiting)


# 2. Postgres down ------------------------------------------------------------------------------
async def test_postgres_down_edits_accepted_and_land_after(
    migrated: Servers, tmp_path: Path
) -> None:
    postgres = migrated.postgres
    if postgres is None:
        pytest.skip("Postgres is external (REDLINE_TEST_DATABASE_URL): cannot stop it")
    async with stack(migrated, tmp_path) as s:
        users, doc_ids = await team(s.client, docs=6)
        async with Editors(s.client, users, doc_ids, per_doc=2, pause_s=0.02) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            try:
                await asyncio.to_thread(postgres.stop)
                assert not postgres.running()
                before = editors.ledger.total
                await asyncio.sleep(10)
                during = editors.ledger.total - before
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
    async with stack(migrated, tmp_path, flush_interval=3600) as s:
        users, doc_ids = await team(s.client, docs=8)
        async with Editors(s.client, users, doc_ids, per_doc=2) as editors:
            await asyncio.sleep(2)
            ledger = await editors.stop()
        no_refusals(ledger)
        assert ledger.total > 0
        assert await dirty_count(s) == len(doc_ids), "something flushed before the shutdown"

        s.flusher.send(signal.SIGTERM)
        code = await s.flusher.wait(30)
        assert code == 0, f"flusher exited with {code}\n{s.flusher.tail()}"
        assert "drained" in s.flusher.log(current_run=True), s.flusher.tail()
        # Right after the exit, with no waiting: the drain wrote everything.
        await check_landed(s, users[0], ledger, within_s=0)


async def test_sigterm_mid_batch_drains_and_exits_cleanly(
    migrated: Servers, tmp_path: Path
) -> None:
    """SIGTERM while a batch is stuck half written (the test holds the rows' locks): the
    cancelled batch commits nothing, the drain takes its documents again once the locks go,
    and the flusher exits 0 with everything saved."""
    async with stack(migrated, tmp_path, flush_batch_size=2) as s:
        users, doc_ids = await team(s.client, docs=8)
        async with Editors(s.client, users, doc_ids, per_doc=1, pause_s=0.02) as editors:
            await until("a first flush", 10, lambda: saved_once(s, users[0], doc_ids))
            locker = await asyncpg.connect(s.settings.dsn, timeout=5)
            watcher = await asyncpg.connect(s.settings.dsn, timeout=5)
            try:
                async with locker.transaction():
                    await locker.execute(
                        "SELECT 1 FROM documents WHERE id = any($1::uuid[]) FOR UPDATE", doc_ids
                    )
                    await until("a flush blocked on our locks", 10, lambda: _blocked(watcher))
                    ledger = await editors.stop()
                    s.flusher.send(signal.SIGTERM)
                    await asyncio.sleep(0.5)  # the drain starts and meets the same locks
                    assert s.flusher.alive, f"exited before draining\n{s.flusher.tail()}"
            finally:
                await locker.close()
                await watcher.close()
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
    settings = stack_settings(
        dataclasses.replace(migrated, redis_url=valkey.url), flusher_metrics_port=free_port()
    )
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
        async with stack(migrated, tmp_path, flush_interval=3600) as s:
            s.flusher.env["REDLINE_QUEUE_REDIS_URL"] = queue_url
            await s.flusher.restart()
            users, doc_ids = await team(s.client, docs=4)
            async with Editors(s.client, users, doc_ids, per_doc=1) as editors:
                await asyncio.sleep(1)
                ledger = await editors.stop()
            no_refusals(ledger)
            proxy.set("refuse")
            await until(
                "the outage logged", 10, lambda: _logged(s.flusher, "queue Redis (job loop)")
            )
            assert s.flusher.alive, s.flusher.tail()
            s.flusher.send(signal.SIGTERM)
            code = await s.flusher.wait(30)
            assert code == 0, f"flusher exited with {code}\n{s.flusher.tail()}"
            assert "drained" in s.flusher.log(current_run=True), s.flusher.tail()
            await check_landed(s, users[0], ledger, within_s=0)


async def _logged(service: Service, text: str) -> bool:
    return text in service.log(current_run=True)


def _hostport(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]


def _port(url: str) -> int:
    return int(_hostport(url).rsplit(":", 1)[1])
