"""Co-editing under faults (issue 12): the api, the flusher and the state Valkey SIGKILLed while
pycrdt clients type over the y-websocket protocol into shared documents, with an HTTP editor
PUTting (base_version) into the same documents.

Real processes: two api processes and a flusher (tests/support/faults.py) on a private state
Valkey with AOF (conftest.py). Clients keep their pycrdt document across connections and
reconnect to the next api that answers (tests/support/collab.py).

Lost/acked: a socket update is *acked* when the server relayed it back to its sender (relay
happens only after the durable append), an HTTP edit when it answered 202. It is *lost* when its
token is not in the final text. Each scenario then checks that the clients converged, that the
final GET equals their text and Postgres after the flush, and prints
"lost/acked = L/A over N faults".
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import Valkey, free_port
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers
from tests.support.collab import TOKEN, AnyTypist, HttpTypist, Typist, tokens
from tests.support.faults import (
    Stack,
    dirty,
    stack,
    stack_settings,
    stored,
    team,
    until,
)
from tests.support.locks import row_locked
from tests.support.processes import Service, http_ready, running, settings_env
from tests.support.users import User, edit

pytestmark = pytest.mark.slow

PREFIX = "seeded before anyone typed>"
DOWN_S = 1.0
RECOVERY_S = 10.0
CONVERGE_S = 15.0
DRAIN_S = 20.0


def collab_settings(servers: Servers, redis_url: str, **overrides: object) -> Settings:
    return stack_settings(servers, redis_url, collab_enabled=True, **overrides)


@dataclass
class CollabStack:
    stack: Stack
    apis: list[Service]
    hosts: list[str]

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    @property
    def keys(self) -> Keys:
        return self.stack.keys


@asynccontextmanager
async def collab_stack(
    settings: Settings, log_dir: Path, apis: int = 2
) -> AsyncIterator[CollabStack]:
    """`stack` (an api and the flusher) plus `apis - 1` more api processes on other ports."""
    async with stack(settings, log_dir) as s, AsyncExitStack() as exits:
        services = [s.api]
        hosts = [f"127.0.0.1:{settings.api_port}"]
        for i in range(1, apis):
            other = settings.model_copy(update={"api_port": free_port()})
            host = f"127.0.0.1:{other.api_port}"
            services.append(
                await exits.enter_async_context(
                    running(
                        f"api{i}",
                        "services.api",
                        settings_env(other),
                        log_dir,
                        http_ready(f"http://{host}/readyz"),
                    )
                )
            )
            hosts.append(host)
        yield CollabStack(s, services, hosts)


async def seeded_team(c: CollabStack, docs: int) -> tuple[list[User], list[str]]:
    """The harness's team, its documents holding PREFIX (written over HTTP before any socket
    opened them: the first sockets seed the Yjs state from that text, in two processes)."""
    users, doc_ids = await team(c.stack.client, docs)
    for doc_id in doc_ids:
        r = await edit(c.stack.client, users[0], doc_id, PREFIX)
        assert r.status_code == 202, r.text
    return users, doc_ids


@dataclass
class Typing:
    """Every client of a scenario, by document."""

    sockets: dict[str, list[Typist]]
    http: dict[str, list[HttpTypist]]

    def all_sockets(self) -> list[Typist]:
        return [t for ts in self.sockets.values() for t in ts]

    def all_http(self) -> list[HttpTypist]:
        return [t for ts in self.http.values() for t in ts]

    @property
    def acked(self) -> int:
        return sum(len(t.acked) for t in self.all_sockets()) + sum(
            len(t.acked) for t in self.all_http()
        )

    def everyone(self) -> list[AnyTypist]:
        return [*self.all_sockets(), *self.all_http()]

    async def stop_typing(self) -> None:
        """Stop everyone, and wait for the HTTP editors' last PUT: one landing after the
        texts converged would change them again."""
        for t in self.everyone():
            t.stop_typing()
        await asyncio.gather(*(t.close() for t in self.all_http()))

    async def close(self) -> None:
        await asyncio.gather(*(t.close() for t in self.everyone()))


@asynccontextmanager
async def typing(
    hosts: Sequence[str],
    users: list[User],
    doc_ids: list[str],
    *,
    per_doc: int,
    http_per_doc: int = 0,
    pause_s: float = 0.05,
) -> AsyncIterator[Typing]:
    """`per_doc` socket typists a document, spread over the api hosts (each starting on a
    different one), and `http_per_doc` HTTP typists; all closed at the end."""
    sockets: dict[str, list[Typist]] = {}
    http: dict[str, list[HttpTypist]] = {}
    n = 0
    for d, doc_id in enumerate(doc_ids):
        for i in range(per_doc):
            order = [*hosts[n % len(hosts) :], *hosts[: n % len(hosts)]]
            name = f"d{d}s{i}"
            sockets.setdefault(doc_id, []).append(
                Typist(
                    name,
                    order,
                    users[n % len(users)],
                    doc_id,
                    prefix=PREFIX,
                    pause_s=pause_s,
                    seed=n,
                )
            )
            n += 1
        for i in range(http_per_doc):
            http.setdefault(doc_id, []).append(
                HttpTypist(
                    f"d{d}h{i}", hosts, users[i % len(users)], doc_id, prefix=PREFIX, seed=1000 + n
                )
            )
            n += 1
    t = Typing(sockets, http)
    try:
        yield t
    finally:
        await t.close()


async def all_synced(t: Typing) -> float:
    return await until(
        "every typist connected", RECOVERY_S, _async(lambda: all(s.synced for s in t.all_sockets()))
    )


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


async def acks_grow(t: Typing, what: str) -> float:
    """Until some update is acked from now on (the system takes edits again)."""
    before = t.acked
    return await until(what, RECOVERY_S, _async(lambda: t.acked > before))


async def get_text(
    client: httpx.AsyncClient, host: str, user: User, doc_id: str
) -> tuple[int, str]:
    r = await client.get(f"http://{host}/v1/documents/{doc_id}", headers=user.auth)
    assert r.status_code == 200, r.text
    body = r.json()
    return body["version"], body["content"]


async def converged(c: CollabStack, t: Typing, user: User) -> dict[str, str]:
    """Until every document's typists hold one text and GET (on every api) returns it; that
    text, by document."""
    finals: dict[str, str] = {}

    async with httpx.AsyncClient(timeout=5) as client:

        async def check() -> bool:
            for doc_id, typists in t.sockets.items():
                texts = {ty.current for ty in typists}
                if not all(ty.synced for ty in typists) or len(texts) != 1:
                    return False
                (text,) = texts
                for host in c.hosts:
                    if (await get_text(client, host, user, doc_id))[1] != text:
                        return False
                finals[doc_id] = text
            return True

        with contextlib.suppress(pytest.fail.Exception):
            await until("the clients to converge with GET", CONVERGE_S, check, interval=0.1)
            return finals
        # Not converged: what the server holds (GET) against what was acked, for the message.
        served = {d: (await get_text(client, c.hosts[0], user, d))[1] for d in t.sockets}
    lost = acked = 0
    for doc_id, text in served.items():
        present = {m.group(0) for m in TOKEN.finditer(text)}
        of_doc: list[AnyTypist] = [*t.sockets[doc_id], *t.http.get(doc_id, [])]
        for ty in of_doc:
            acked += len(ty.acked)
            lost += len(ty.acked - present)
    views = {ty.name: len(ty.current) for ty in t.all_sockets()}
    pytest.fail(
        f"not converged within {CONVERGE_S:.0f}s: against GET lost/acked = {lost}/{acked};"
        f" text lengths: GET {dict((d[:8], len(x)) for d, x in served.items())}, clients {views}"
    )


async def log_lengths(settings: Settings, keys: Keys, doc_ids: Sequence[str]) -> dict[str, int]:
    client = Redis.from_url(settings.state_url)
    try:
        return {d: int(await client.xlen(keys.update_log(d))) for d in doc_ids}
    finally:
        await client.aclose()


async def flushed(c: CollabStack, user: User, finals: dict[str, str]) -> dict[str, tuple[int, str]]:
    """Until Postgres holds every final text at GET's version, nothing is dirty and every update
    log is trimmed; Postgres's rows."""
    doc_ids = sorted(finals)
    rows: dict[str, tuple[int, str]] = {}
    why = ["not checked"]

    async with httpx.AsyncClient(timeout=5) as client:

        async def check() -> bool:
            nonlocal rows
            rows = await stored(c.settings.dsn, doc_ids)
            for d in doc_ids:
                if rows[d][1] != finals[d]:
                    why[0] = (
                        f"{d}: Postgres v{rows[d][0]} {rows[d][1][-60:]!r} != {finals[d][-60:]!r}"
                    )
                    return False
                got = await get_text(client, c.hosts[0], user, d)
                if got != rows[d]:
                    why[0] = f"{d}: GET v{got[0]} != Postgres v{rows[d][0]}"
                    return False
            if n := await dirty(c.settings.state_url, c.keys):
                why[0] = f"{n} documents dirty"
                return False
            logs = await log_lengths(c.settings, c.keys, doc_ids)
            why[0] = f"update logs not trimmed: {logs}"
            return not any(logs.values())

        with contextlib.suppress(pytest.fail.Exception):
            await until("the flush", DRAIN_S, check, interval=0.2)
            return rows
    pytest.fail(f"not flushed and trimmed within {DRAIN_S:.0f}s: {why[0]}")


@dataclass
class Tally:
    acked: int
    lost: int
    typed: int
    unacked_kept: int  # typed, never acknowledged, and there anyway (stored or resent)
    lost_tokens: list[str] = field(default_factory=list)  # acked, not in the final text


def tally(t: Typing, finals: dict[str, str]) -> Tally:
    """Every acked token against the final text; and the final text is whole tokens, each
    once (a duplicated or split update would show here)."""
    acked = lost = typed = kept = 0
    lost_tokens: list[str] = []
    for doc_id, final in finals.items():
        found = tokens(final, PREFIX)
        twice = {tok: n for tok, n in found.items() if n > 1}
        assert not twice, f"{doc_id}: tokens typed once appear more than once: {twice}"
        of_doc: list[AnyTypist] = [*t.sockets.get(doc_id, []), *t.http.get(doc_id, [])]
        for ty in of_doc:
            acked += len(ty.acked)
            gone = sorted(tok for tok in ty.acked if not found[tok])
            lost += len(gone)
            lost_tokens += gone
            typed += len(ty.typed)
            kept += sum(1 for tok in ty.typed if tok not in ty.acked and found[tok])
        # Converged clients hold everything they typed, so the server has it too.
        for ty in t.sockets[doc_id]:
            missing = [tok for tok in ty.typed if not found[tok]]
            assert not missing, f"{ty.name} typed {missing[:5]} and the converged text lacks them"
    for ty in t.all_http():
        for tok in lost_tokens:
            if tok in ty.attempts:
                print(f"lost {tok}: {ty.attempts[tok]}")
    return Tally(acked, lost, typed, kept, lost_tokens)


def no_internal_errors(t: Typing) -> None:
    """Never a 1011 on a socket nor a 5xx but 503 over HTTP, whatever was killed."""
    codes = {code for ty in t.all_sockets() for code in ty.close_codes}
    assert 1011 not in codes, {ty.name: dict(ty.close_codes) for ty in t.all_sockets()}
    answers = {a for ty in t.all_http() for a in ty.answers}
    assert not {a for a in answers if a.startswith("5") and a != "503"}, answers


def report(scenario: str, faults: int, tl: Tally, t: Typing) -> None:
    reconnects = sum(ty.connections for ty in t.all_sockets()) - len(t.all_sockets())
    http: dict[str, int] = {}
    for ty in t.all_http():
        for k, v in ty.answers.items():
            http[k] = http.get(k, 0) + v
    print(
        f"{scenario}: lost/acked = {tl.lost}/{tl.acked} over {faults} faults; typed {tl.typed}"
        f" (unacked but kept {tl.unacked_kept}); {reconnects} reconnects; http answers {http}"
    )


# SIGKILL the api ---------------------------------------------------------------------------------
async def test_api_sigkill_mid_typing_loses_no_acknowledged_update(
    migrated: Servers, valkey: Valkey, tmp_path: Path
) -> None:
    """Two api processes, three socket typists and an HTTP editor a document. Each api is
    SIGKILLed in turn while they type: its clients reconnect to the other one (their resync
    resends what the server lacks), then it is restarted. Every acked update is in the final
    text, the clients converge, and GET == their text == Postgres after the flush."""
    settings = collab_settings(migrated, valkey.url)
    rng = random.Random(12)
    async with collab_stack(settings, tmp_path) as c:
        users, doc_ids = await seeded_team(c, docs=2)
        async with typing(c.hosts, users, doc_ids, per_doc=3, http_per_doc=1) as t:
            await all_synced(t)
            await asyncio.sleep(1.0)
            kills = []
            for victim in (0, 1):
                await asyncio.sleep(rng.random() * 0.5)
                before = t.acked
                assert await c.apis[victim].kill() == -9
                kills.append(before)
                # The killed process's clients carry on through the other one.
                await acks_grow(t, f"acks through the other api while api {victim} is down")
                await asyncio.sleep(DOWN_S)
                await c.apis[victim].start()
                await asyncio.sleep(1.0)
            await acks_grow(t, "acks after both restarts")
            await t.stop_typing()
            finals = await converged(c, t, users[0])
            rows = await flushed(c, users[0], finals)
            tl = tally(t, finals)
            report("api SIGKILL", len(kills), tl, t)
            assert tl.acked > 0 and tl.lost == 0, tl
            assert sum(ty.connections for ty in t.all_sockets()) > len(t.all_sockets()), (
                "no client reconnected: the kills met nobody"
            )
            assert all(rows[d][1] == finals[d] for d in doc_ids)
            no_internal_errors(t)


# SIGKILL the flusher -----------------------------------------------------------------------------
async def _leased(redis: Redis, keys: Keys) -> bool:
    """Some shard's flush lease is held: a flush pass is under way."""
    return bool(await redis.exists(*(keys.flush_lease(s) for s in range(keys.shards))))


class Versions:
    """Samples Postgres's (version, ylog) of each document while the scenario runs: neither may
    ever go backwards."""

    def __init__(self, dsn: str, doc_ids: list[str]) -> None:
        self.dsn, self.doc_ids = dsn, doc_ids
        self.seen: dict[str, tuple[int, tuple[int, int]]] = {}
        self.backwards: list[str] = []
        self.advanced = 0
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            while True:
                rows = await conn.fetch(
                    "SELECT id::text AS id, version, ylog FROM documents"
                    " WHERE id = any($1::uuid[])",
                    self.doc_ids,
                )
                for r in rows:
                    log_id = _stream_id(r["ylog"])
                    now = (r["version"], log_id)
                    was = self.seen.get(r["id"])
                    if was is not None:
                        if now[0] < was[0] or now[1] < was[1]:
                            self.backwards.append(f"{r['id']}: {was} -> {now}")
                        elif now > was:
                            self.advanced += 1
                    self.seen[r["id"]] = now
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def _stream_id(value: str | None) -> tuple[int, int]:
    if not value:
        return (0, 0)
    ms, _, seq = value.partition("-")
    return (int(ms), int(seq or 0))


async def test_flusher_sigkill_mid_compaction_loses_nothing_and_postgres_never_goes_back(
    migrated: Servers, valkey: Valkey, tmp_path: Path
) -> None:
    """Many co-edited documents typed into at once, flushed in small batches (several per pass);
    the flusher is SIGKILLed while it compacts: once blocked in its write (a row lock held, so
    before the commit) and twice at a random point of a pass (while it holds a shard's lease),
    then restarted. Nothing acked is lost, Postgres's versions and folded log ids only grow, and
    once typing stops the logs are trimmed to nothing and Postgres holds the clients' text."""
    settings = collab_settings(migrated, valkey.url, flush_batch_size=4)
    rng = random.Random(5)
    async with collab_stack(settings, tmp_path, apis=1) as c:
        users, doc_ids = await seeded_team(c, docs=12)
        versions = Versions(settings.dsn, doc_ids)
        redis = Redis.from_url(settings.state_url)
        flusher = c.stack.flusher
        points: list[str] = []
        try:
            async with typing(c.hosts, users, doc_ids, per_doc=2, pause_s=0.08) as t:
                await all_synced(t)
                await asyncio.sleep(1.5)
                # Blocked in its write: a row of the batch is locked, the flusher waits on it.
                async with row_locked(settings, doc_ids[rng.randrange(len(doc_ids))]):
                    await until("the flusher to wait on the row lock", 10, _lock_waited(settings))
                    assert await flusher.kill() == -9
                points.append("blocked in the batch write")
                await flusher.start()
                for _ in range(2):
                    await asyncio.sleep(1.0 + rng.random())
                    await until("a flush pass", 10, lambda: _leased(redis, c.keys), interval=0.002)
                    await asyncio.sleep(rng.random() * 0.02)
                    assert await flusher.kill() == -9
                    points.append("holding a lease")
                    await flusher.start()
                await acks_grow(t, "acks after the last restart")
                await asyncio.sleep(1.0)
                await t.stop_typing()
                finals = await converged(c, t, users[0])
                rows = await flushed(c, users[0], finals)
                await asyncio.sleep(0.2)  # one more sample of the final rows
                tl = tally(t, finals)
        finally:
            await versions.stop()
            await redis.aclose()
        report(f"flusher SIGKILL ({', '.join(points)})", len(points), tl, t)
        print(f"Postgres rows advanced {versions.advanced} times while sampled")
        assert tl.acked > 0 and tl.lost == 0, tl
        assert not versions.backwards, versions.backwards[:5]
        assert versions.advanced > 0, "Postgres never moved while sampled: the check saw nothing"
        assert all(rows[d][1] == finals[d] for d in doc_ids)
        assert flusher.starts == 1 + len(points)
        no_internal_errors(t)


def _lock_waited(settings: Settings) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        conn = await asyncpg.connect(settings.dsn, timeout=5)
        try:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
        finally:
            await conn.close()
        return bool(waiting)

    return check


# SIGKILL the state Valkey ------------------------------------------------------------------------
async def test_state_valkey_sigkill_mid_typing_loses_no_acknowledged_update(
    migrated: Servers, valkey: Valkey, tmp_path: Path
) -> None:
    """The state Valkey (AOF, appendfsync everysec, on a tmpfs: a killed process leaves its
    writes in the page cache, see `state_valkey`) SIGKILLed twice under two api processes'
    typists and an HTTP editor, down a second each time. Sockets close 1013 (never 1011) and
    reconnect once it is back; every acked update survives, the clients converge, and Postgres
    ends with their text."""
    settings = collab_settings(migrated, valkey.url)
    rng = random.Random(7)
    async with collab_stack(settings, tmp_path) as c:
        users, doc_ids = await seeded_team(c, docs=2)
        async with typing(c.hosts, users, doc_ids, per_doc=3, http_per_doc=1) as t:
            await all_synced(t)
            await asyncio.sleep(1.0)
            kills = 2
            for _ in range(kills):
                await asyncio.sleep(rng.random() * 0.5)
                await asyncio.to_thread(valkey.kill)
                await asyncio.sleep(DOWN_S)
                for service in [*c.apis, c.stack.flusher]:
                    assert service.alive, f"{service.name} died with Redis down\n{service.tail()}"
                await asyncio.to_thread(valkey.start)
                await acks_grow(t, "acks once Valkey is back")
                await asyncio.sleep(1.0)
            await t.stop_typing()
            finals = await converged(c, t, users[0])
            rows = await flushed(c, users[0], finals)
            tl = tally(t, finals)
            report("state Valkey SIGKILL, AOF everysec", kills, tl, t)
            assert tl.acked > 0 and tl.lost == 0, tl
            codes = {code for ty in t.all_sockets() for code in ty.close_codes}
            assert codes - {1000}, f"no socket met the outage: close codes {codes}"
            assert all(rows[d][1] == finals[d] for d in doc_ids)
            no_internal_errors(t)
