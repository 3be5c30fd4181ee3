"""A document Postgres refuses (issue 10): one NUL among many documents must not stop anyone's
autosave. The API refuses such text now, so the poison goes into Redis the way old data or
another path would: through the real edit script, or an HSET. Everything else is the real
worker: its flush jobs, its metrics port, its shutdown drain."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import free_port
from services.flusher import worker
from services.flusher.flush import Flusher
from services.flusher.saves import Unsaveable, save_document, snapshot_document
from shared.domain.documents import EditStatus
from shared.infra.clock import now_ms
from shared.infra.metrics import render
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from tests.conftest import Servers, make_settings
from tests.support.locks import blocked_on_lock, row_locked
from tests.support.metrics import sample
from tests.support.users import User, create_doc, edit, signup
from tests.support.worker import worker_context

POISON = "bad\x00content"


async def poison(redis: Redis, keys: Keys, user: User, doc_id: str, content: str = POISON) -> int:
    """An edit of `content` through the real edit script (what the API did before issue 10)."""
    reply = await Scripts(redis, keys).edit(
        doc_id, content, None, user.user_id, now_ms(), [f"t:{user.tenant_id}"]
    )
    assert reply.status == EditStatus.APPLIED
    return reply.version


async def pg_versions(db: asyncpg.Connection) -> dict[str, int]:
    return {str(r["id"]): r["version"] for r in await db.fetch("SELECT id, version FROM documents")}


async def in_quarantine(redis: Redis, keys: Keys, doc_id: str) -> bool:
    return await redis.zscore(keys.doc_quarantine(doc_id), doc_id) is not None


async def is_dirty(redis: Redis, keys: Keys, doc_id: str) -> bool:
    return await redis.zscore(keys.doc_dirty(doc_id), doc_id) is not None


async def test_one_poisoned_document_among_many_is_quarantined_and_the_rest_land_in_one_pass(
    migrated: Servers,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    settings = make_settings(migrated, flusher_metrics_port=port)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice, bob = await signup(api, "alice"), await signup(api, "bob")
    docs = {
        u: [(await create_doc(api, u, title=f"d{i}"))["id"] for i in range(20)]
        for u in (alice, bob)
    }
    bad_nul, bad_by = docs[alice][0], docs[bob][0]
    # The oldest dirty documents (first in every claim), both in the one batch with the rest.
    await poison(redis, keys, alice, bad_nul)
    assert (await edit(api, bob, bad_by, "fine text")).status_code == 202
    # Refused by asyncpg's encoder before it is sent (a ValueError), not by Postgres.
    await redis.hset(keys.doc(bad_by), "by", "not-a-uuid")
    good = [d for u in (alice, bob) for d in docs[u][1:]]
    for doc_id in good:
        assert (
            await edit(api, alice if doc_id in docs[alice] else bob, doc_id, "v1")
        ).status_code == 202

    ctx: dict[str, Any] = {"settings": settings}
    await worker.startup(ctx)
    try:
        caplog.set_level(logging.INFO)
        result = await worker.flush_dirty(ctx)
        assert "error" not in result, result
        versions = await pg_versions(db)
        assert all(versions[d] == 1 for d in good), "every other document landed in one pass"
        assert versions[bad_nul] == 0 and versions[bad_by] == 0
        for doc_id in (bad_nul, bad_by):
            assert await in_quarantine(redis, keys, doc_id)
            assert not await is_dirty(redis, keys, doc_id), "never retried in a loop"
            assert await redis.ttl(keys.doc(doc_id)) == -1, "its content is kept, unexpiring"
        assert await redis.hget(keys.doc(bad_nul), "c") == POISON
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(bad_nul in m and "CharacterNotInRepertoireError" in m for m in errors), errors
        assert any(bad_by in m and "ValueError" in m for m in errors), errors

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            text = (await http.get("/metrics")).text
        assert sample(text, "redline_quarantined_documents") == 2
        assert sample(text, "redline_flush_quarantined_documents_total", kind="cron") == 2
        assert sample(text, "redline_dirty_documents") == 0

        # The next pass finds nothing to retry: no loop, nothing counted twice.
        again = await worker.flush_dirty(ctx)
        assert again["read"] == 0
        text = render(ctx["registry"]).decode()
        assert sample(text, "redline_flush_quarantined_documents_total", kind="cron") == 2

        # The stats name it: the count for everyone, each id only to those who may open it.
        for user, mine in ((alice, bad_nul), (bob, bad_by)):
            s = (await api.get("/v1/stats/cache", headers=user.auth)).json()
            assert s["quarantined_documents"] == 2 and s["quarantined_ids"] == [mine]
            assert s["status"] == "warning"
            assert any("2 document(s) quarantined" in w for w in s["warnings"]), s["warnings"]

        # A drain with a fresh poison among fresh edits completes and writes the rest.
        for doc_id in good[:5]:
            owner = alice if doc_id in docs[alice] else bob
            assert (await edit(api, owner, doc_id, "v2")).status_code == 202
        await poison(redis, keys, alice, docs[alice][-1])
        caplog.clear()
    finally:
        await worker.shutdown(ctx)
    versions = await pg_versions(db)
    assert [versions[d] for d in good[:5]] == [2] * 5
    assert await in_quarantine(redis, keys, docs[alice][-1])
    messages = [r.getMessage() for r in caplog.records]
    assert not any("drain incomplete" in m for m in messages), messages
    assert any("still dirty, 3 in quarantine" in m for m in messages), messages


async def test_an_accepted_edit_takes_a_document_out_of_quarantine_and_gets_saved(
    api: httpx.AsyncClient,
    flusher: Flusher,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
) -> None:
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice, content="saved once"))["id"]
    await poison(redis, keys, alice, doc_id)
    stats = await flusher.flush_dirty()
    assert stats.quarantined == [doc_id] and stats.newly_quarantined == 1
    status = (await api.get(f"/v1/documents/{doc_id}/status", headers=alice.auth)).json()
    assert (status["version"], status["saved_version"], status["status"]) == (1, 0, "saving")

    assert (await edit(api, alice, doc_id, "fixed")).status_code == 202
    assert not await in_quarantine(redis, keys, doc_id) and await is_dirty(redis, keys, doc_id)
    await flusher.flush_dirty()
    row = await db.fetchrow("SELECT version, content FROM documents WHERE id = $1", doc_id)
    assert row is not None and (row["version"], row["content"]) == (2, "fixed")
    assert not await is_dirty(redis, keys, doc_id)

    # A poisoned version again: quarantined again. Deleting it empties the quarantine.
    await poison(redis, keys, alice, doc_id)
    assert (await flusher.flush_dirty()).newly_quarantined == 1
    assert await in_quarantine(redis, keys, doc_id)
    assert (await api.delete(f"/v1/documents/{doc_id}", headers=alice.auth)).status_code == 204
    assert not await in_quarantine(redis, keys, doc_id)


async def test_an_edit_between_the_refused_write_and_the_quarantine_keeps_its_dirty_mark(
    api: httpx.AsyncClient,
    settings: Settings,
    flusher: Flusher,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
) -> None:
    alice = await signup(api, "alice")
    first, second = sorted([(await create_doc(api, alice, title=t))["id"] for t in "ab"])
    # The poisoned one sorts first: after the whole batch fails, its own write fails first, and
    # then the good one's write parks on the row lock held here, before the quarantine move.
    refused = await poison(redis, keys, alice, first)
    assert (await edit(api, alice, second, "good")).status_code == 202
    async with row_locked(settings, second):
        task = await blocked_on_lock(settings, flusher.flush_dirty())
        # The user fixes the document while the flush holds the refused version.
        assert (await edit(api, alice, first, "fixed meanwhile")).status_code == 202
    stats = await task
    assert stats.quarantined == [] and stats.written == 1
    assert not await in_quarantine(redis, keys, first), "a newer edit is not quarantined blindly"
    assert await is_dirty(redis, keys, first), "the newer edit keeps its dirty mark"
    assert int(await redis.hget(keys.doc(first), "v") or 0) == refused + 1
    await flusher.flush_dirty()
    row = await db.fetchrow("SELECT version, content FROM documents WHERE id = $1", first)
    assert row is not None and (row["version"], row["content"]) == (2, "fixed meanwhile")


async def test_save_and_snapshot_jobs_of_a_poisoned_document_fail_at_once_with_the_reason(
    api: httpx.AsyncClient, settings: Settings, redis: Redis, keys: Keys
) -> None:
    alice = await signup(api, "alice")
    doc_id = (await create_doc(api, alice))["id"]
    await poison(redis, keys, alice, doc_id)
    kw: dict[str, Any] = dict(doc_id=doc_id, user_id=alice.user_id, tenant_id=alice.tenant_id)
    # The first try of its job (not the last): a transient error would be a Retry here.
    async with worker_context(settings, job_try=1, job_id="rlt:test-job") as ctx:
        with pytest.raises(Unsaveable, match="Postgres refuses its current content"):
            await save_document(ctx, **kw)
        assert await in_quarantine(redis, keys, doc_id)
        with pytest.raises(asyncpg.CharacterNotInRepertoireError):
            await snapshot_document(ctx, **kw, label="v1")
    # The user is told once per job, at its first try (no retries were scheduled).
    inbox = [fields for _, fields in await redis.xrange(keys.inbox(alice.user_id))]
    assert [f["status"] for f in inbox] == ["failed", "failed"], inbox
    assert "Unsaveable" in inbox[0]["error"]
    assert "CharacterNotInRepertoireError" in inbox[1]["error"]


async def test_a_flush_of_only_poison_still_finishes(
    api: httpx.AsyncClient, flusher: Flusher, redis: Redis, keys: Keys
) -> None:
    """Every document of a batch refused: each is isolated, none written, the pass ends."""
    alice = await signup(api, "alice")
    ids = [(await create_doc(api, alice, title=f"d{i}"))["id"] for i in range(7)]
    for doc_id in ids:
        await poison(redis, keys, alice, doc_id)
    stats = await flusher.flush_dirty()
    assert sorted(stats.quarantined) == sorted(ids) and stats.written == 0
    assert await flusher.dirty_count() == (0, None)
    assert await flusher.quarantine_count() == 7
