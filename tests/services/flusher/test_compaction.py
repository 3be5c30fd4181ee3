"""Compaction is the flush: a co-edited document's stored Yjs state with its update log folded in
reaches Postgres (text, state, the last log id) in the batch statement, the log is trimmed only
up to what was written, and an update appended while the flush writes stays for the next one.
HTTP edits of a co-edited document merge as updates instead of overwriting. A document whose log
grows long goes urgent and is flushed first."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from services.flusher import worker
from services.flusher.flush import Flusher
from services.flusher.saves import snapshot_document
from shared.domain import collab, dirty
from shared.infra.clients import redis_client
from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.update_log import (
    AppendOptions,
    AppendStatus,
    LogLimits,
    SeedStatus,
    UpdateLog,
    append_options,
)
from tests.support.flushers import flusher_of
from tests.support.locks import blocked_on_lock, row_locked
from tests.support.users import User, create_doc, edit, signup
from tests.support.worker import worker_context


@pytest.fixture
async def updates(settings: Settings, keys: Keys) -> AsyncIterator[UpdateLog]:
    client = redis_client(settings.state_url, binary=True)
    yield UpdateLog(client, keys, append_options(settings))
    await client.aclose()


async def co_edited(api: httpx.AsyncClient, updates: UpdateLog, content: str) -> tuple[User, str]:
    """A document opened for co-editing, as the collab socket does on first use: loaded, then
    seeded from its text."""
    ada = await signup(api, "ada")
    doc = await create_doc(api, ada, content=content)
    assert (await api.get(f"/v1/documents/{doc['id']}", headers=ada.auth)).status_code == 200
    assert await updates.seed(doc["id"], collab.seed_update(content), 0) == SeedStatus.INSTALLED
    return ada, doc["id"]


class Typist:
    """A socket editor's document: each keystroke is an update appended as the socket does."""

    def __init__(
        self, updates: UpdateLog, user: User, doc_id: str, base: bytes, at: int = 1
    ) -> None:
        self.updates, self.user, self.doc_id, self.at = updates, user, doc_id, at
        self.doc, self.text = collab.new_doc(base)

    async def type(self, chars: str) -> None:
        before = self.doc.get_state()
        self.text += chars
        reply = await self.updates.append(
            self.doc_id,
            self.doc.get_update(before),
            "socket:1",
            self.user.user_id,
            self.at,
            (f"t:{self.user.tenant_id}", f"u:{self.user.user_id}"),
        )
        assert reply.status == AppendStatus.APPENDED


async def pg_row(db: asyncpg.Connection, doc_id: str) -> asyncpg.Record:
    row = await db.fetchrow(
        "SELECT content, version, ystate, ylog FROM documents WHERE id = $1", doc_id
    )
    assert row is not None
    return row


async def text_of(api: httpx.AsyncClient, user: User, doc_id: str) -> str:
    r = await api.get(f"/v1/documents/{doc_id}", headers=user.auth)
    assert r.status_code == 200, r.text
    content: str = r.json()["content"]
    return content


async def test_socket_and_http_edits_merge_and_the_flush_folds_them_into_postgres(
    api: httpx.AsyncClient,
    flusher: Flusher,
    updates: UpdateLog,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
) -> None:
    ada, doc_id = await co_edited(api, updates, "middle")
    typist = Typist(updates, ada, doc_id, collab.seed_update("middle"))
    await typist.type(" END")
    # An HTTP editor PUTs the whole text; it becomes the smallest update from the current text
    # (an insert of "START "), which the socket editor's document applies beside its own.
    r = await edit(api, ada, doc_id, "START middle END")
    assert r.status_code == 202 and r.json()["version"] == 2
    assert await text_of(api, ada, doc_id) == "START middle END"
    snap = await updates.read(doc_id, 100)
    assert len(snap.log) == 2 and len(snap.log[1][1]) < 40, "an insert, not the whole text"
    typist.doc.apply_update(snap.log[1][1])
    assert str(typist.text) == "START middle END"

    stats = await flusher.flush_dirty()
    assert (stats.read, stats.written, stats.cleaned) == (1, 1, 1)
    row = await pg_row(db, doc_id)
    assert (row["content"], row["version"]) == ("START middle END", 2)
    assert row["ystate"] is not None and row["ylog"] is not None
    assert await redis.xlen(keys.update_log(doc_id)) == 0, "the folded entries are trimmed"
    snap = await updates.read(doc_id, 100)
    assert snap.text == "START middle END" and snap.folded_id == row["ylog"]

    # Evicted from Redis, the document comes back from Postgres with its Yjs state: a socket
    # editor's document still applies to it (no second seed doubling the text).
    await redis.delete(keys.doc(doc_id), keys.update_log(doc_id))
    assert await text_of(api, ada, doc_id) == "START middle END"
    reloaded = await updates.read(doc_id, 100)
    assert reloaded.state == bytes(row["ystate"])
    await typist.type("!")
    assert await text_of(api, ada, doc_id) == "START middle END!"
    assert (await edit(api, ada, doc_id, "START middle END!?")).status_code == 202
    assert (await flusher.flush_dirty()).written == 1
    assert (await pg_row(db, doc_id))["content"] == "START middle END!?"


async def test_an_update_appended_while_the_flush_writes_waits_for_the_next_flush(
    api: httpx.AsyncClient,
    flusher: Flusher,
    updates: UpdateLog,
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
) -> None:
    """The write path raced: the flush has read and folded version 1 and waits on a row lock to
    commit it while a keystroke lands. The trim keeps that keystroke, the document stays dirty,
    and the next flush writes it: nothing acknowledged is lost, Postgres never goes back."""
    ada, doc_id = await co_edited(api, updates, "ab")
    typist = Typist(updates, ada, doc_id, collab.seed_update("ab"))
    await typist.type("c")
    async with row_locked(settings, doc_id):
        flush = await blocked_on_lock(settings, flusher.flush_dirty())
        await typist.type("d")  # acknowledged during the write
    first = await flush
    assert first.written == 1 and first.cleaned == 0
    assert (await pg_row(db, doc_id))["content"] == "abc"
    assert await redis.xlen(keys.update_log(doc_id)) == 1, "the late keystroke stays in the log"
    assert await redis.zscore(keys.doc_dirty(doc_id), doc_id) is not None
    assert await text_of(api, ada, doc_id) == "abcd"

    second = await flusher.flush_dirty()
    assert (second.written, second.cleaned) == (1, 1)
    row = await pg_row(db, doc_id)
    assert (row["content"], row["version"]) == ("abcd", 2)
    assert await redis.xlen(keys.update_log(doc_id)) == 0


async def test_a_stale_base_version_of_a_co_edited_document_is_409(
    api: httpx.AsyncClient, updates: UpdateLog
) -> None:
    ada, doc_id = await co_edited(api, updates, "text")
    typist = Typist(updates, ada, doc_id, collab.seed_update("text"))
    await typist.type("!")
    r = await edit(api, ada, doc_id, "other", base=0)
    assert r.status_code == 409 and r.json()["current_version"] == 1
    assert await text_of(api, ada, doc_id) == "text!"
    r = await edit(api, ada, doc_id, "text!?", base=1)
    assert r.status_code == 202
    assert await text_of(api, ada, doc_id) == "text!?"


async def test_a_snapshot_of_a_co_edited_document_holds_its_merged_text(
    api: httpx.AsyncClient, updates: UpdateLog, settings: Settings, db: asyncpg.Connection
) -> None:
    ada, doc_id = await co_edited(api, updates, "snap")
    typist = Typist(updates, ada, doc_id, collab.seed_update("snap"))
    await typist.type("shot")  # not folded yet: `c` in Redis still says "snap"
    kw = {"doc_id": doc_id, "user_id": ada.user_id, "tenant_id": ada.tenant_id}
    async with worker_context(settings, job_try=1, job_id="rlt:snap-job") as ctx:
        await snapshot_document(ctx, **kw, label="v1")
    row = await db.fetchrow(
        "SELECT content, version FROM document_snapshots WHERE document_id = $1", doc_id
    )
    assert row is not None and (row["content"], row["version"]) == ("snapshot", 1)


async def test_a_long_log_goes_urgent_and_the_urgent_pass_folds_only_it(
    api: httpx.AsyncClient,
    flusher: Flusher,
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
) -> None:
    """Past a quarter of a log cap (10 of 40 entries here), a co-edited document's dirty score
    goes below zero: the every-second urgent pass flushes it, and only it, long before the cron
    pass; the oldest-dirty age still reads its real age, not the shifted score."""
    client = redis_client(settings.state_url, binary=True)
    small = UpdateLog(client, keys, AppendOptions(LogLimits(entries=40, bytes=1_000_000)))
    try:
        ada = await signup(api, "ada")
        ids = []
        for content in ("hot", "calm"):
            doc = await create_doc(api, ada, content=content)
            assert (await api.get(f"/v1/documents/{doc['id']}", headers=ada.auth)).is_success
            seed = collab.seed_update(content)
            assert await small.seed(doc["id"], seed, 0) == SeedStatus.INSTALLED
            ids.append(doc["id"])
        hot, calm = ids
        at = now_ms()
        hot_typist = Typist(small, ada, hot, collab.seed_update("hot"), at)
        await Typist(small, ada, calm, collab.seed_update("calm"), at).type("!")
        for char in "123456789":
            await hot_typist.type(char)
        assert (await redis.zscore(keys.doc_dirty(hot), hot) or -1) >= 0, "9 entries: not yet"
        assert await dirty.urgent_shards(redis, keys) == []
        await hot_typist.type("0")
        assert (await redis.zscore(keys.doc_dirty(hot), hot) or 0) < 0, "10 entries: urgent"
        assert await dirty.urgent_shards(redis, keys) == [keys.shard_of(hot)]
        count, age = await dirty.dirty_count(redis, keys)
        assert count == 2 and age is not None and 0 <= age < 60

        async with worker_context(settings) as ctx:  # the every-second cron job
            assert await worker.flush_urgent(ctx) == {"read": 1, "written": 1}
        assert (await pg_row(db, hot))["content"] == "hot1234567890"
        assert (await pg_row(db, calm))["content"] == "calm", "not urgent: left to the cron"
        assert await redis.zscore(keys.doc_dirty(hot), hot) is None
        assert await redis.zscore(keys.doc_dirty(calm), calm) is not None
        assert (await flusher.flush_urgent()).read == 0
        assert (await flusher.flush_dirty()).written == 1
        assert (await pg_row(db, calm))["content"] == "calm!"
    finally:
        await client.aclose()


def test_the_urgent_pass_is_a_cron_job_every_second(settings: Settings) -> None:
    jobs = {job.name: job for job in worker.create_worker(settings).cron_jobs}
    assert jobs["cron:flush_urgent"].second == set(range(60))


async def test_a_log_longer_than_the_flushers_cap_is_folded_over_passes_and_never_cut(
    api: httpx.AsyncClient,
    updates: UpdateLog,
    settings: Settings,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
) -> None:
    """A flusher whose log cap (10) is under the api's: it reads one entry past its cap, so it
    sees that 25 entries are more than it read. It keeps each partial fold in Redis and writes
    nothing until a pass reads the rest; the text in Postgres then holds every keystroke. (Written
    at the document's version, a partial fold would have marked it clean, the rest to expire.)"""
    ada, doc_id = await co_edited(api, updates, "")
    typist = Typist(updates, ada, doc_id, collab.seed_update(""))
    typed = "abcdefghijklmnopqrstuvwxy"
    for char in typed:
        await typist.type(char)
    small = settings.model_copy(update={"collab_log_max_entries": 10})
    async with flusher_of(small, redis, keys) as flusher:
        for left in (14, 3):
            stats = await flusher.flush_dirty()
            assert (stats.written, stats.cleaned) == (0, 0)
            assert await redis.xlen(keys.update_log(doc_id)) == left, "the fold trimmed 11"
            assert await redis.zscore(keys.doc_dirty(doc_id), doc_id) is not None
            assert (await pg_row(db, doc_id))["content"] == ""
        stats = await flusher.flush_dirty()
        assert (stats.written, stats.cleaned) == (1, 1)
    row = await pg_row(db, doc_id)
    assert (row["content"], row["version"]) == (typed, len(typed))
