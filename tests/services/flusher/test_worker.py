"""The arq worker's jobs, run by a real arq Worker in burst mode."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from services.api.app import create_app
from services.flusher import worker
from shared.domain.jobs import enqueue_flush
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.support.metrics import closed_port_url
from tests.support.users import create_doc, edit, signup
from tests.support.worker import worker_context


async def version_in_pg(db: asyncpg.Connection, doc_id: str) -> int:
    return int(await db.fetchval("SELECT version FROM documents WHERE id = $1", doc_id))


async def test_last_editor_leaving_enqueues_one_deduplicated_flush(
    api: httpx.AsyncClient,
    settings: Settings,
    db: asyncpg.Connection,
    queue: ArqRedis,
    ctx: dict[str, Any],
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/presence"
    await api.post(url, headers=alice.auth)
    await edit(api, alice, doc["id"], "draft")
    assert (await api.delete(url, headers=alice.auth)).json() == {"editors": []}
    queued = await queue.zrange(keys.queue_name, 0, -1)
    assert queued == [keys.flush_job_id(doc["id"]).encode()]
    # While it is queued, asking again adds nothing.
    assert not await enqueue_flush(queue, keys, doc["id"])
    job = (await queue.queued_jobs(queue_name=keys.queue_name))[0]
    assert (job.function, job.args) == ("flush_document", (doc["id"],))
    result = await worker.flush_document(ctx, *job.args)
    assert result == {"read": 1, "written": 1}
    assert await version_in_pg(db, doc["id"]) == 1


async def test_cron_flush_job_flushes_everything_dirty(
    api: httpx.AsyncClient, ctx: dict[str, Any], db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    docs = [(await create_doc(api, alice, title=f"d{i}"))["id"] for i in range(30)]
    for doc_id in docs:
        await edit(api, alice, doc_id, "one")
        await edit(api, alice, doc_id, "two")
    result = await worker.flush_dirty(ctx)
    assert result["read"] == 30 and result["written"] == 30
    assert await db.fetchval("SELECT count(*) FROM documents WHERE version = 2") == 30


async def test_expired_presence_is_swept_and_flushed(
    migrated: Servers, db: asyncpg.Connection, redis: Redis
) -> None:
    settings = make_settings(migrated, presence_ttl_s=1)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            alice = await signup(api, "alice")
            doc = await create_doc(api, alice)
            await api.post(f"/v1/documents/{doc['id']}/presence", headers=alice.auth)
            await edit(api, alice, doc["id"], "tab closed without leaving")
            async with worker_context(settings) as ctx:
                assert await worker.sweep_presence(ctx) == 0, "still present"
                await asyncio.sleep(1.1)
                assert await worker.sweep_presence(ctx) == 1
                assert await version_in_pg(db, doc["id"]) == 1
                status = await api.get(f"/v1/documents/{doc['id']}/status", headers=alice.auth)
                assert status.json()["editors"] == []
                assert await worker.sweep_presence(ctx) == 0, "swept once"


async def test_shutdown_drains_every_dirty_document(
    api: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    docs = [(await create_doc(api, alice, title=f"d{i}"))["id"] for i in range(10)]
    for doc_id in docs:
        await edit(api, alice, doc_id, "unsaved")
    ctx: dict[str, Any] = {"settings": settings}
    await worker.startup(ctx)
    await worker.shutdown(ctx)
    assert await db.fetchval("SELECT count(*) FROM documents WHERE version = 1") == 10


async def test_a_startup_failed_half_way_leaves_shutdown_its_clients_to_close(
    migrated: Servers, redis: Redis
) -> None:
    """Postgres unreachable at startup: the state client is open already when the pool fails.
    arq then runs shutdown, which closes what startup opened, once (a second shutdown: nothing)."""
    settings = make_settings(
        migrated, database_url=closed_port_url(migrated.database_url), db_pool_min=1
    )
    ctx: dict[str, Any] = {"settings": settings}
    with pytest.raises(OSError):
        await worker.startup(ctx)
    assert "flusher" not in ctx
    state: Redis = ctx["state"]
    before = len(await redis.client_list())
    assert await state.ping()
    assert len(await redis.client_list()) == before + 1
    await worker.shutdown(ctx)
    await worker.shutdown(ctx)

    async def closed() -> bool:
        return len(await redis.client_list()) == before

    for _ in range(50):
        if await closed():
            break
        await asyncio.sleep(0.05)
    assert await closed(), "the state client was left open"
