"""The fault suite's harness: a private state Valkey (killable, restartable, AOF or none), the real
api and flusher processes against it, editors that keep a Jepsen-style ledger of what they were
told, and the lost/acked accounting each scenario prints and asserts.

Lost/acked: an edit is *acked* when the api answered 202 with a version. It is *lost* when
  - a later edit of the same document was acked with the same version and other content (Redis
    went back and the version was handed out again: the first one's content is gone), or
  - after the final drain, Postgres (or GET) holds a version below it.
Anything else the api answered (503, a timeout) is not acked, whatever happened to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import Postgres, Valkey, free_port
from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.support.ci import cannot_run
from tests.support.processes import Service, http_ready, log_ready, running, settings_env
from tests.support.users import User, add_member, create_doc, signup

FILLER = "The quick brown fox jumps over the lazy dog. " * 4


def stack_settings(servers: Servers, redis_url: str | None = None, **overrides: object) -> Settings:
    """The test suite's settings (so key prefix and shard count agree with the fixtures) on
    `redis_url` (default: the session's Redis), plus what the processes need: their own ports, no
    login throttling, and short leases and drains so that recovery fits the tests' time bounds."""
    redis_url = redis_url or servers.redis_url
    values: dict[str, object] = dict(
        redis_url=redis_url,
        api_port=free_port(),
        login_rate=100_000,
        # A killed flusher's shard leases block the next flusher until they expire.
        flush_lease_ms=2000,
        flush_retry_max_s=1.0,
        shutdown_drain_s=15.0,
        flusher_metrics_port=free_port(),
    )
    values.update(overrides)
    return make_settings(dataclasses.replace(servers, redis_url=redis_url), **values)


@dataclass
class Stack:
    settings: Settings
    keys: Keys
    api: Service
    flusher: Service
    client: httpx.AsyncClient
    flusher_probe: str

    async def ready(self) -> bool:
        try:
            r = await self.client.get("/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def flusher_ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                return (await c.get(f"{self.flusher_probe}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False


@asynccontextmanager
async def stack(
    api_settings: Settings, log_dir: Path, flusher_settings: Settings | None = None
) -> AsyncIterator[Stack]:
    """The api and the flusher as real processes (the flusher may see other URLs, e.g. a
    proxy in front of Postgres)."""
    flusher_settings = flusher_settings or api_settings
    base = f"http://127.0.0.1:{api_settings.api_port}"
    probe = f"http://127.0.0.1:{flusher_settings.flusher_metrics_port}"
    async with AsyncExitStack() as exits:
        api = await exits.enter_async_context(
            running(
                "api",
                "services.api",
                settings_env(api_settings),
                log_dir,
                http_ready(f"{base}/readyz"),
            )
        )
        flusher = await exits.enter_async_context(
            running(
                "flusher",
                "services.flusher",
                settings_env(flusher_settings),
                log_dir,
                log_ready("flusher ready"),
            )
        )
        client = await exits.enter_async_context(httpx.AsyncClient(base_url=base, timeout=15))
        keys = Keys(api_settings.key_prefix, api_settings.doc_shards)
        yield Stack(api_settings, keys, api, flusher, client, probe)


@asynccontextmanager
async def team_stack(
    settings: Settings, log_dir: Path, *, docs: int, flusher_settings: Settings | None = None
) -> AsyncIterator[tuple[Stack, list[User], list[str]]]:
    """`stack`, with a `team` of two signed up in it: the stack, the users, their documents."""
    async with stack(settings, log_dir, flusher_settings) as s:
        users, doc_ids = await team(s.client, docs)
        yield s, users, doc_ids


async def team(client: httpx.AsyncClient, docs: int) -> tuple[list[User], list[str]]:
    """An owner and a member of one tenant, and `docs` documents they both edit."""
    owner = await signup(client, "owner")
    member = await add_member(client, owner, "member")
    ids = [(await create_doc(client, owner, f"doc {i}"))["id"] for i in range(docs)]
    return [owner, member], ids


async def login(client: httpx.AsyncClient, name: str, password: str) -> User:
    r = await client.post("/v1/auth/login", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    return User(body["user_id"], body["tenant_id"], body["token"])


# The ledger ------------------------------------------------------------------------------------
@dataclass
class Ledger:
    acks: dict[str, list[tuple[int, str]]] = field(default_factory=lambda: defaultdict(list))
    # Every answer that was not a 202, by status (or exception name) and by phase label.
    answers: Counter[str] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    acks_in: Counter[str] = field(default_factory=Counter)  # acks by the phase they came back in
    # Seconds each acked edit took, by phase.
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # What the first few refusals said, for a failure message.
    examples: list[str] = field(default_factory=list)
    phase: str = "steady"

    @property
    def acked(self) -> int:
        return sum(len(v) for v in self.acks.values())

    def highest(self, doc_id: str) -> int:
        return max((v for v, _ in self.acks[doc_id]), default=0)

    def content(self, doc_id: str, version: int) -> str:
        """The content of the newest edit acked with that version."""
        return [c for v, c in self.acks[doc_id] if v == version][-1]

    def p99(self, phase: str) -> float:
        values = sorted(self.latencies[phase])
        return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")

    def reissued(self) -> list[tuple[str, int]]:
        """Acked versions handed out twice with different content: the earlier one was lost."""
        out = []
        for doc_id, acks in self.acks.items():
            seen: dict[int, str] = {}
            for version, content in acks:
                if version in seen and seen[version] != content:
                    out.append((doc_id, version))
                seen[version] = content
        return out


class Editors:
    """`per_doc` concurrent clients typing into each document until stopped (bounded)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        users: list[User],
        doc_ids: list[str],
        *,
        per_doc: int = 2,
        pause_s: float = 0.02,
        limit_s: float = 120.0,
    ) -> None:
        self.client = client
        self.users = users
        self.ledger = Ledger()
        self._stop = asyncio.Event()
        self._deadline = time.monotonic() + limit_s
        self._pause_s = pause_s
        self._tasks = [
            asyncio.create_task(self._type(i, doc_id, f"editor{i}"))
            for i, doc_id in enumerate(d for d in doc_ids for _ in range(per_doc))
        ]

    async def _type(self, i: int, doc_id: str, name: str) -> None:
        n = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            n += 1
            content = f"{name} edit {n}\n{FILLER}"
            user = self.users[i % len(self.users)]
            sent = time.monotonic()
            try:
                r = await self.client.put(
                    f"/v1/documents/{doc_id}/content", json={"content": content}, headers=user.auth
                )
            except httpx.HTTPError as exc:
                self._refused(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            else:
                if r.status_code == 202:
                    self.ledger.acks[doc_id].append((r.json()["version"], content))
                    self.ledger.answers["202"] += 1
                    self.ledger.acks_in[self.ledger.phase] += 1
                    self.ledger.latencies[self.ledger.phase].append(time.monotonic() - sent)
                else:
                    self._refused(str(r.status_code), f"{r.status_code} {r.text[:300]}")
            await asyncio.sleep(self._pause_s)

    def _refused(self, what: str, detail: str) -> None:
        self.ledger.answers[what] += 1
        self.ledger.refusals[self.ledger.phase, what] += 1
        if len(self.ledger.examples) < 5:
            self.ledger.examples.append(detail)

    def acked_since(self, count: int) -> int:
        return self.ledger.acked - count

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


# Checks ---------------------------------------------------------------------------------------
async def until(
    what: str, within_s: float, check: Callable[[], Awaitable[bool]], interval: float = 0.05
) -> float:
    """Await `check()` until true; the seconds it took. Fails after `within_s`."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > within_s:
            pytest.fail(f"timed out after {within_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def stored(dsn: str, doc_ids: list[str]) -> dict[str, tuple[int, str]]:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT id::text AS id, version, content FROM documents WHERE id = any($1::uuid[])",
            doc_ids,
        )
    finally:
        await conn.close()
    return {r["id"]: (r["version"], r["content"]) for r in rows}


async def read_versions(
    client: httpx.AsyncClient, user: User, doc_ids: list[str]
) -> dict[str, tuple[int, str]]:
    out = {}
    for doc_id in doc_ids:
        r = await client.get(f"/v1/documents/{doc_id}", headers=user.auth)
        assert r.status_code == 200, r.text
        body = r.json()
        out[doc_id] = (body["version"], body["content"])
    return out


async def dirty(redis_url: str, keys: Keys) -> int:
    client = Redis.from_url(redis_url)
    try:
        return sum([await client.zcard(keys.dirty(s)) for s in range(keys.shards)])
    finally:
        await client.aclose()


async def overdue_jobs(redis_url: str, keys: Keys, older_than_s: float = 10) -> int:
    """Queued jobs whose run time passed more than `older_than_s` ago: a stuck job."""
    client = Redis.from_url(redis_url)
    try:
        cutoff = now_ms() - older_than_s * 1000
        return int(await client.zcount(keys.queue_name, "-inf", cutoff))
    finally:
        await client.aclose()


@dataclass
class Accounting:
    acked: int
    lost: int
    reissued: int
    behind: int


async def account(s: Stack, user: User, ledger: Ledger, within_s: float = 20) -> Accounting:
    """After the editors stopped: wait (bounded) for the flusher to drain, then count the lost
    edits (see the module docstring) against Postgres and GET."""
    doc_ids = sorted(ledger.acks)

    async def drained() -> bool:
        rows = await stored(s.settings.dsn, doc_ids)
        return all(rows[d][0] >= ledger.highest(d) for d in doc_ids) and (
            await dirty(s.settings.state_url, s.keys) == 0
        )

    with contextlib.suppress(pytest.fail.Exception):  # not drained: counted below, not hidden
        await until("the drain", within_s, drained, interval=0.2)
    rows = await stored(s.settings.dsn, doc_ids)
    read = await read_versions(s.client, user, doc_ids)
    reissued = ledger.reissued()
    behind = sum(1 for d in doc_ids for v, _ in ledger.acks[d] if v > min(rows[d][0], read[d][0]))
    for d in doc_ids:
        version, content = rows[d]
        if version == ledger.highest(d):
            # Postgres holds that edit's own content (the newest ack with that version).
            assert content == ledger.content(d, version), f"{d}: content at v{version} is not acked"
            assert read[d] == rows[d], f"{d}: GET {read[d][0]} disagrees with Postgres {version}"
    return Accounting(ledger.acked, behind + len(reissued), len(reissued), behind)


def no_refusals(ledger: Ledger) -> None:
    refused = sum(ledger.refusals.values())
    assert not refused, f"{refused} edits were not acknowledged, e.g. {ledger.examples}"


def report(scenario: str, faults: int, points: set[str], acc: Accounting, recovery: str) -> str:
    line = (
        f"{scenario}: lost/acked = {acc.lost}/{acc.acked} over {faults} faults at"
        f" {len(points)} points ({', '.join(sorted(points))}); recovery {recovery}"
    )
    print(line)
    return line


# The state Valkey -------------------------------------------------------------------------------
# Where a killable Valkey keeps its AOF: a tmpfs when there is one. These scenarios kill the
# *process* and keep the machine, so what was written to the file must survive; but with
# `appendfsync everysec` Valkey postpones that write (up to 2 s, still answering clients) while a
# background fsync is slow, and on a busy disk (a full suite on CI) a kill then loses acknowledged
# writes: Redis's own loss, not Redline's, measured by `python -m bench.aof_kill` and documented in
# the README. On a tmpfs an fsync never stalls, so each kill tests Redline's write path alone.
TMPFS = Path("/dev/shm")


@asynccontextmanager
async def state_valkey(data_dir: Path, *, aof: bool) -> AsyncIterator[Valkey]:
    """A Valkey of the test's own; its data (AOF, log) on a tmpfs when there is one, reachable
    through `data_dir` (a link) all the same."""
    with contextlib.ExitStack() as stack:
        if aof:
            _on_tmpfs(data_dir, stack)
        valkey = Valkey(data_dir, free_port(), aof=aof)
        await asyncio.to_thread(valkey.start)
        try:
            yield valkey
        finally:
            await asyncio.to_thread(valkey.kill)


def _on_tmpfs(data_dir: Path, stack: contextlib.ExitStack) -> None:
    """Make `data_dir` a link to a fresh directory on the tmpfs (removed with `stack`), if any."""
    if not (TMPFS.is_dir() and os.access(TMPFS, os.W_OK)):
        return
    held = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=TMPFS)))
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    data_dir.symlink_to(held, target_is_directory=True)


async def valkey_info(url: str, section: str) -> dict[str, object]:
    client = Redis.from_url(url, socket_timeout=2, decode_responses=True)
    try:
        return dict(await client.info(section))
    finally:
        await client.aclose()


# Postgres: the session's own, stopped or paused; row locks that hold a flush mid-batch ---------
def own_postgres(servers: Servers) -> Postgres:
    """The session's embedded Postgres, which a test may stop or pause (and must bring back);
    the test is skipped against an external one."""
    if servers.postgres is None:
        cannot_run("Postgres is external (REDLINE_TEST_DATABASE_URL): cannot stop or pause it")
    return servers.postgres


@asynccontextmanager
async def flush_blocked(dsn: str, doc_ids: list[str]) -> AsyncIterator[None]:
    """Hold row locks on `doc_ids` until a flusher's batch UPDATE waits on them: its batch is then
    half written (rows copied, nothing committed, dirty marks in Redis). Leaving closes our
    connections, which ends the locks (also when Postgres went away meanwhile)."""
    locker = await asyncpg.connect(dsn, timeout=5)
    # pg_stat_activity is a per-transaction snapshot: watch it from another connection.
    watcher = await asyncpg.connect(dsn, timeout=5)
    try:
        await locker.transaction().start()
        await locker.execute(
            "SELECT 1 FROM documents WHERE id = any($1::uuid[]) FOR UPDATE", doc_ids
        )
        await until("a flush blocked on our locks", 10, lambda: _update_waits(watcher))
        yield
    finally:
        for conn in (locker, watcher):
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)


async def _update_waits(conn: asyncpg.Connection) -> bool:
    """True when some session's UPDATE of documents waits on a lock (the test's)."""
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query ILIKE 'update documents%'"
    )
    return bool(waiting)


def postgres_pids(pgdata: Path) -> list[int]:
    """The postmaster (from its pid file) and its children (from /proc; Linux). Each backend is
    in a session of its own (the postmaster's children call setsid), so a process-group signal
    would not reach them: they are signalled one by one."""
    postmaster = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


def signal_postgres(pgdata: Path, sig: int) -> int:
    """Send `sig` to every Postgres process; how many there were."""
    pids = postgres_pids(pgdata)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return len(pids)
