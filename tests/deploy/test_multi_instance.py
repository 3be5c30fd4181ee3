"""Scale-out, for real: two api processes and two flusher workers on one Redis and one Postgres
(what `docker compose up --scale flusher=2` and two api replicas run).

Typists edit the same documents through both APIs at once, editors leave (each leave queues a
flush job that either worker may take), both workers flush on their cron ticks, and a watcher
reads Postgres all along. Afterwards Postgres holds exactly the newest acknowledged version of
every document, with its content, and the watcher never saw a version go backwards.
The matcher part of the scenario waits for services/matcher (built on another branch).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from shared.embedded import free_port
from shared.keys import Keys
from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.support.processes import Service, http_ready, log_ready, running, settings_env
from tests.support.users import User, add_member, create_doc, signup

pytestmark = pytest.mark.slow

EDIT_SECONDS = 6.0
DOCS = 12
SETTLE_S = 15.0


@dataclass
class Ledger:
    """The newest acknowledged version of each document, and its content."""

    newest: dict[str, tuple[int, str]] = field(default_factory=dict)
    acked: int = 0

    def ack(self, doc_id: str, version: int, content: str) -> None:
        self.acked += 1
        if version > self.newest.get(doc_id, (0, ""))[0]:
            self.newest[doc_id] = (version, content)


@dataclass
class Fleet:
    settings: Settings
    apis: list[httpx.AsyncClient]
    flushers: list[Service]


@asynccontextmanager
async def fleet(servers: Servers, log_dir: Path) -> AsyncIterator[Fleet]:
    base = make_settings(servers, login_rate=100_000, flush_lease_ms=2000, flush_retry_max_s=1.0)
    async with AsyncExitStack() as stack:
        clients, flushers = [], []
        for n in (1, 2):
            settings = base.model_copy(update={"api_port": free_port()})
            env = settings_env(settings)
            url = f"http://127.0.0.1:{settings.api_port}"
            await stack.enter_async_context(
                running(f"api{n}", "services.api", env, log_dir, http_ready(f"{url}/readyz"))
            )
            clients.append(
                await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            )
        for n in (1, 2):
            flushers.append(
                await stack.enter_async_context(
                    running(
                        f"flusher{n}",
                        "services.flusher",
                        # DEBUG: every flushed batch is logged, cron pass or single job.
                        settings_env(base.model_copy(update={"log_level": "DEBUG"})),
                        log_dir,
                        log_ready("flusher ready"),
                    )
                )
            )
        yield Fleet(base, clients, flushers)


async def typist(
    apis: list[httpx.AsyncClient],
    user: User,
    doc_id: str,
    name: str,
    ledger: Ledger,
    until: float,
) -> None:
    """Type into one document through a random API each time, then leave (queues a flush)."""
    n = 0
    await random.choice(apis).post(f"/v1/documents/{doc_id}/presence", headers=user.auth)
    while time.monotonic() < until:
        n += 1
        content = f"{name} keystroke {n}"
        r = await random.choice(apis).put(
            f"/v1/documents/{doc_id}/content", json={"content": content}, headers=user.auth
        )
        assert r.status_code == 202, r.text
        ledger.ack(doc_id, r.json()["version"], content)
        await asyncio.sleep(random.uniform(0.005, 0.03))
    await random.choice(apis).delete(f"/v1/documents/{doc_id}/presence", headers=user.auth)


async def watch_versions(dsn: str, stop: asyncio.Event, regressions: list[str]) -> None:
    """Read Postgres all along; record any document whose version ever went down."""
    seen: dict[str, int] = {}
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            for row in await conn.fetch("SELECT id::text, version FROM documents"):
                before = seen.get(row["id"], 0)
                if row["version"] < before:
                    regressions.append(f"{row['id']}: {before} -> {row['version']}")
                seen[row["id"]] = max(before, row["version"])
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def dirty_count(redis: Redis, keys: Keys) -> int:
    return sum([await redis.zcard(keys.dirty(shard)) for shard in range(keys.shards)])


def flushes_in(service: Service) -> int:
    """Batches a worker flushed (its DEBUG log has one line each: cron passes and flush jobs)."""
    return sum(
        1
        for line in service.log().splitlines()
        if "flushed batch" in line and "read=0," not in line
    )


async def test_two_apis_and_two_flushers_lose_nothing_and_never_go_backwards(
    migrated: Servers, tmp_path: Path, db: asyncpg.Connection
) -> None:
    ledger = Ledger()
    regressions: list[str] = []
    async with fleet(migrated, tmp_path) as f:
        owner = await signup(f.apis[0], "owner")
        member = await add_member(f.apis[1], owner, "member")
        docs = [(await create_doc(f.apis[n % 2], owner, title=f"d{n}"))["id"] for n in range(DOCS)]
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_versions(f.settings.dsn, stop, regressions))
        until = time.monotonic() + EDIT_SECONDS
        # Two typists per document, one per user, each spraying both APIs.
        await asyncio.gather(
            *(typist(f.apis, owner, d, "owner", ledger, until) for d in docs),
            *(typist(f.apis, member, d, "member", ledger, until) for d in docs),
        )
        keys = Keys(f.settings.key_prefix, f.settings.doc_shards)
        redis = Redis.from_url(f.settings.state_url, decode_responses=True)
        try:
            for _ in range(int(SETTLE_S / 0.2)):  # other processes' progress: poll it
                if not (left := await dirty_count(redis, keys)):
                    break
                await asyncio.sleep(0.2)
            assert left == 0, f"the flushers did not catch up: {left} still dirty"
        finally:
            await redis.aclose()
        stop.set()
        await watcher
        per_worker = [flushes_in(s) for s in f.flushers]

    print(f"{ledger.acked} edits acknowledged on {DOCS} documents; flushes per worker {per_worker}")
    rows = {
        r["id"]: (r["version"], r["content"])
        for r in await db.fetch("SELECT id::text, version, content FROM documents")
    }
    assert ledger.acked > 100, f"only {ledger.acked} edits acknowledged"
    assert rows == ledger.newest, "Postgres must hold every newest acknowledged version"
    assert regressions == [], "a version went backwards in Postgres"
    assert all(n > 0 for n in per_worker), f"both workers must flush: {per_worker}"
