"""`REDLINE_EDIT_MIN_REPLICAS`: an edit is acknowledged only once a replica of the state Valkey
holds it (issue 13, item 3).

Real processes: a private primary (AOF, as production) and a replica of it (deploy/embedded.py
`replicaof`), the api and flusher on the primary with `edit_min_replicas=1`. Expected: with the
replica up, edits answer 202 and the replica already holds each one when its 202 arrives; with
the replica paused (SIGSTOP) or killed, edits answer 503 with Retry-After and a problem that says
the edit is on the primary but not acknowledged (never a 202, never a hang); once the replica is
back, edits answer 202 again. No 202 is ever answered for an edit the replica does not hold.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from deploy.embedded import Valkey, free_port
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers
from tests.support.collab import editor
from tests.support.faults import stack, stack_settings, state_valkey, team, until
from tests.support.users import User

pytestmark = pytest.mark.slow

TIMEOUT_MS = 100
# Not a speed target: the bound past which an answer counts as a hang (the WAIT's 100 ms, plus
# a loaded machine's scheduling).
HANG_S = 5.0


@asynccontextmanager
async def replica_of(primary: Valkey, data_dir: Path) -> AsyncIterator[Valkey]:
    replica = Valkey(data_dir, free_port(), aof=True, replicaof=primary.port)
    await asyncio.to_thread(replica.start)
    try:
        yield replica
    finally:
        if replica.proc is not None and replica.is_running():
            replica.proc.send_signal(signal.SIGCONT)  # a stopped process ignores SIGTERM
        await asyncio.to_thread(replica.kill)


async def linked(primary: Redis) -> bool:
    info = await primary.info("replication")
    return (
        int(info.get("connected_slaves", 0)) >= 1
        and info.get("slave0", {}).get("state") == "online"
    )


class Editor:
    """Edits one document in turn and checks every 202 against the replica at once."""

    def __init__(
        self, client: httpx.AsyncClient, user: User, doc_id: str, replica: Redis, keys: Keys
    ):
        self.client, self.user, self.doc_id = client, user, doc_id
        self.replica, self.keys = replica, keys
        self.n = 0
        self.co_edited = False
        self.acked = 0
        self.refused = 0

    async def edit(self) -> httpx.Response:
        self.n += 1
        content = f"edit {self.n}"
        started = time.monotonic()
        r = await self.client.put(
            f"/v1/documents/{self.doc_id}/content",
            json={"content": content},
            headers=self.user.auth,
        )
        took = time.monotonic() - started
        assert took < HANG_S, f"the edit took {took:.1f}s"
        if r.status_code == 202:
            self.acked += 1
            version = r.json()["version"]
            # Acknowledged: the replica must hold this version (or a newer one) already.
            v, c = await self.replica.hmget(self.keys.doc(self.doc_id), ["v", "c"])
            assert v is not None and int(v) >= version, (v, version)
            # A co-edited document's `c` is its text as of the last fold, not this edit's.
            if int(v) == version and not self.co_edited:
                assert c == content
        else:
            self.refused += 1
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["retry-after"] == "1"
            detail = r.json()["detail"]
            assert "stored on the primary" in detail and "not acknowledged" in detail, detail
        return r

    async def acked_again(self) -> bool:
        return (await self.edit()).status_code == 202


@dataclass
class Replicated:
    """A stack on a primary with one replica, waiting for it (`edit_min_replicas=1`)."""

    replica: Valkey
    admin: Redis  # the primary
    reader: Redis  # the replica
    settings: Settings
    keys: Keys
    users: list[User]
    ed: Editor


@asynccontextmanager
async def replicated(migrated: Servers, tmp_path: Path) -> AsyncIterator[Replicated]:
    async with (
        state_valkey(tmp_path / "primary", aof=True) as primary,
        replica_of(primary, tmp_path / "replica") as replica,
    ):
        admin = Redis.from_url(primary.url, decode_responses=True)
        # A paused replica never answers: a read of it after a false 202 fails, not hangs.
        reader = Redis.from_url(replica.url, decode_responses=True, socket_timeout=2)
        try:
            await until("the replica in sync", 20, lambda: linked(admin))
            settings = stack_settings(
                migrated,
                primary.url,
                edit_min_replicas=1,
                edit_replica_timeout_ms=TIMEOUT_MS,
                edit_rate=100_000,
            )
            async with stack(settings, tmp_path) as s:
                users, doc_ids = await team(s.client, docs=1)
                ed = Editor(s.client, users[0], doc_ids[0], reader, s.keys)
                yield Replicated(replica, admin, reader, settings, s.keys, users, ed)
        finally:
            await admin.aclose()
            await reader.aclose()


async def test_edits_wait_for_a_replica_and_answer_503_without_one(
    migrated: Servers, tmp_path: Path
) -> None:
    async with replicated(migrated, tmp_path) as r:
        replica, admin, reader, ed = r.replica, r.admin, r.reader, r.ed

        # Replica up: every edit is acknowledged, and held by the replica.
        for _ in range(30):
            assert (await ed.edit()).status_code == 202
        acked_before = ed.acked

        # Replica paused: the primary still takes the edit, but nobody acknowledges it.
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGSTOP)
        for _ in range(10):
            assert (await ed.edit()).status_code == 503
        # Stored on the primary nonetheless (so a retry is no surprise).
        assert await admin.hget(r.keys.doc(ed.doc_id), "c") == f"edit {ed.n}"
        replica.proc.send_signal(signal.SIGCONT)
        await until("an acknowledged edit after SIGCONT", 20, ed.acked_again)

        # Replica killed: the same, until it is started again and has resynced.
        await asyncio.to_thread(replica.kill)
        await until("the primary to notice", 20, lambda: _unlinked(admin))
        for _ in range(10):
            assert (await ed.edit()).status_code == 503
        await asyncio.to_thread(replica.start)
        await until("an acknowledged edit after the restart", 30, ed.acked_again)
        for _ in range(10):
            assert (await ed.edit()).status_code == 202

        assert ed.acked > acked_before and ed.refused >= 20
        # Everything the primary holds reaches the replica (refused edits included).
        want = await admin.hget(r.keys.doc(ed.doc_id), "v")
        await until(
            "the replica to catch up",
            10,
            lambda: _holds(reader, r.keys.doc(ed.doc_id), want),
        )
        print(f"replica fault: {ed.acked} acked, {ed.refused} refused (503), 0 lost")


async def test_a_co_edited_documents_http_edit_waits_for_the_replica_too(
    migrated: Servers, tmp_path: Path
) -> None:
    """The HTTP edit of a document open in a co-editing socket becomes a Yjs update, appended on
    another connection: the wait goes through a mark written after it."""
    async with replicated(migrated, tmp_path) as r:
        replica, admin, ed = r.replica, r.admin, r.ed
        ed.co_edited = True
        host = f"127.0.0.1:{r.settings.api_port}"
        async with editor(host, r.users[1], ed.doc_id):
            for _ in range(10):
                assert (await ed.edit()).status_code == 202
            assert await admin.hexists(r.keys.doc(ed.doc_id), "yb")
            assert replica.proc is not None
            replica.proc.send_signal(signal.SIGSTOP)
            for _ in range(5):
                assert (await ed.edit()).status_code == 503
            replica.proc.send_signal(signal.SIGCONT)
            await until("an acknowledged edit after SIGCONT", 20, ed.acked_again)
            for _ in range(5):
                assert (await ed.edit()).status_code == 202
        print(f"co-edited, replica paused: {ed.acked} acked, {ed.refused} refused")


async def test_a_co_editing_socket_relays_only_what_the_replica_holds(
    migrated: Servers, tmp_path: Path
) -> None:
    """A socket's update is acknowledged by its relay: with the replica up, every relayed update
    is on the replica already; with it paused, the update is stored on the primary but not
    relayed, and the socket closes 1013 (the client's resync after reconnecting settles it)."""
    async with replicated(migrated, tmp_path) as r:
        host = f"127.0.0.1:{r.settings.api_port}"
        # The version, not the log's length: the flusher (every second here) trims what it folds.
        doc_key = r.keys.doc(r.ed.doc_id)
        async with editor(host, r.users[0], r.ed.doc_id) as ed:
            base = int(await r.admin.hget(doc_key, "v") or 0)
            for n in range(10):
                await ed.type(0, str(n))
                await ed.settled()
                assert int(await r.reader.hget(doc_key, "v") or 0) >= base + n + 1
            assert ed.acked == 10
            assert r.replica.proc is not None
            r.replica.proc.send_signal(signal.SIGSTOP)
            await ed.type(0, "unconfirmed")
            started = time.monotonic()
            await ed.closed()
            assert time.monotonic() - started < HANG_S
            assert ed.ws.close_code == 1013, ed.ws.close_reason
            assert ed.acked == 10 and len(ed.pending) == 1
            assert int(await r.admin.hget(doc_key, "v") or 0) == base + 11  # on the primary
            r.replica.proc.send_signal(signal.SIGCONT)
        async with editor(host, r.users[0], r.ed.doc_id) as again:
            # Stored on the primary, it reached the replica and every process once it resumed.
            assert str(again.text) == "unconfirmed9876543210"
        print("co-editing socket, replica paused: 10 relayed (all on the replica), 1 held back")


async def _unlinked(primary: Redis) -> bool:
    return int((await primary.info("replication")).get("connected_slaves", 0)) == 0


async def _holds(replica: Redis, key: str, version: str | None) -> bool:
    return version is not None and await replica.hget(key, "v") == version


def test_min_replicas_is_refused_on_cluster() -> None:
    with pytest.raises(ValidationError, match="EDIT_MIN_REPLICAS is not supported"):
        Settings(
            redis_url="redis://127.0.0.1:1/0",
            queue_redis_url="redis://127.0.0.1:2/0",
            redis_cluster=True,
            edit_min_replicas=1,
        )
    assert Settings(redis_cluster=False, edit_min_replicas=1).edit_min_replicas == 1
