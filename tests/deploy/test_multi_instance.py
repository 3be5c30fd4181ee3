"""Scale-out, for real: two api processes, two flusher workers and two matchers on one Redis and
one Postgres (what `docker compose up --scale flusher=2 --scale matcher=2` and two api replicas
run).

Typists edit the same documents through both APIs at once, editors leave (each leave queues a
flush job that either worker may take), both workers flush on their cron ticks, and a watcher
reads Postgres all along. Afterwards Postgres holds exactly the newest acknowledged version of
every document, with its content, and the watcher never saw a version go backwards.
Meanwhile pairs of users, one of each pair on each matcher, all seek a match at once: every
match is reciprocal (both partners told, same room), many cross the two processes, and no user is
ever in two matches.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import free_port
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.services.matcher.conftest import make_user, open_socket, recv, recv_type, send
from tests.support.processes import Service, http_ready, log_ready, running, settings_env
from tests.support.users import User, add_member, create_doc, signup

pytestmark = pytest.mark.slow

EDIT_SECONDS = 6.0
PAIRS = 10
MATCH_WINDOW_S = 4.0
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
    matchers: list[str]


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
        matchers = []
        for n in (1, 2):
            settings = base.model_copy(update={"matcher_port": free_port()})
            http = f"http://127.0.0.1:{settings.matcher_port}"
            await stack.enter_async_context(
                running(
                    f"matcher{n}",
                    "services.matcher",
                    settings_env(settings),
                    log_dir,
                    http_ready(f"{http}/readyz"),
                )
            )
            matchers.append(f"ws://127.0.0.1:{settings.matcher_port}")
        yield Fleet(base, clients, flushers, matchers)


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


async def seek(url: str, user: User, found: dict[str, list[dict[str, Any]]]) -> None:
    """Connect, seek once, and record every match_found this user hears within the window."""
    async with open_socket(url, user) as ws:
        await recv_type(ws, "queued", within=10)
        await send(ws, type="find_match")
        deadline = time.monotonic() + MATCH_WINDOW_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await recv(ws, within=left)
            except TimeoutError:
                break
            if frame["type"] == "match_found":
                found.setdefault(user.user_id, []).append(frame)
            else:
                assert frame["type"] == "no_match_found", frame


async def match_pairs(f: Fleet, db: asyncpg.Connection) -> tuple[int, int]:
    """PAIRS pairs seek at once, one of each pair on each matcher. Each pair shares an interest
    of its own (two in common), and everyone shares `common`: a racing seeker may also claim a
    stranger, which is what could double-match. Returns (pairs matched, pairs across matchers)."""
    side: dict[str, int] = {}
    found: dict[str, list[dict[str, Any]]] = {}
    seekers = []
    for n in range(PAIRS):
        for which in (0, 1):
            user = await make_user(f.apis[which], db, f"m{n}x{which}", [f"t{n}", "common"])
            side[user.user_id] = which
            seekers.append(seek(f.matchers[which], user, found))
    await asyncio.gather(*seekers)
    twice = {u: frames for u, frames in found.items() if len(frames) > 1}
    assert not twice, f"users matched more than once: {twice}"
    partner = {u: frames[0]["partner_id"] for u, frames in found.items()}
    room = {u: frames[0]["document_id"] for u, frames in found.items()}
    for user_id, other in partner.items():
        assert partner.get(other) == user_id, "a match must reach both partners"
        assert room[other] == room[user_id]
    pairs = {frozenset((u, p)) for u, p in partner.items()}
    across = sum(1 for pair in pairs if len({side[u] for u in pair}) == 2)
    return len(pairs), across


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
        # ... while pairs of users are matched across the two matchers.
        *_, (matched, across) = await asyncio.gather(
            *(typist(f.apis, owner, d, "owner", ledger, until) for d in docs),
            *(typist(f.apis, member, d, "member", ledger, until) for d in docs),
            match_pairs(f, db),
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
    print(f"{matched} of {PAIRS} pairs matched, {across} across the two matchers")
    rows = {
        r["id"]: (r["version"], r["content"])
        # The typed documents (the matches made rooms too: documents of their own).
        for r in await db.fetch(
            "SELECT id::text, version, content FROM documents WHERE id = ANY($1::uuid[])", docs
        )
    }
    assert ledger.acked > 100, f"only {ledger.acked} edits acknowledged"
    assert rows == ledger.newest, "Postgres must hold every newest acknowledged version"
    assert regressions == [], "a version went backwards in Postgres"
    assert all(n > 0 for n in per_worker), f"both workers must flush: {per_worker}"
    # 2 x PAIRS users seeking at once: nearly all are matched, and some across processes. How
    # many cross is arrival order, not correctness: a seeker that comes before its own partner
    # takes a stranger sharing `common` (seen: 2 of 10 across on a loaded machine, usually 5+);
    # no double match and both partners told (checked in match_pairs) are the correctness.
    assert matched >= PAIRS - 2 and across >= 1, (matched, across)
    rooms = await db.fetchval("SELECT count(*) FROM documents WHERE NOT id = ANY($1::uuid[])", docs)
    assert rooms == matched, "one room per match, none for a match that did not happen"
