"""The save-now and snapshot jobs: run directly, and end to end through a real flusher process
(arq runs a job at least once, so a rerun must change nothing)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from arq.worker import Retry

from services.flusher.saves import _retry_or_raise, save_document, snapshot_document
from shared.domain.errors import NotFound
from shared.settings import Settings
from tests.conftest import make_settings
from tests.support.processes import Service, log_ready, running, settings_env
from tests.support.users import User, create_doc, edit, signup
from tests.support.worker import worker_context


@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    async with worker_context(settings, job_try=1, job_id="rlt:test-job") as context:
        yield context


async def test_save_document_writes_the_newest_version(
    api: httpx.AsyncClient, ctx: dict[str, Any], db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    for i in range(3):
        assert (await edit(api, alice, doc["id"], f"v{i}")).status_code == 202
    result = await save_document(
        ctx, doc_id=doc["id"], user_id=alice.user_id, tenant_id=alice.tenant_id
    )
    assert result == {"document_id": doc["id"], "saved_version": 3}
    row = await db.fetchrow("SELECT content, version FROM documents WHERE id = $1", doc["id"])
    assert row is not None
    assert (row["content"], row["version"]) == ("v2", 3)


async def test_a_rerun_snapshot_job_stores_one_revision(
    api: httpx.AsyncClient, ctx: dict[str, Any], db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, content="first")
    await edit(api, alice, doc["id"], "unsaved but acknowledged")
    kw = dict(doc_id=doc["id"], user_id=alice.user_id, tenant_id=alice.tenant_id, label="v1")
    first = await snapshot_document(ctx, **kw)
    again = await snapshot_document(ctx, **kw)
    assert first == again
    assert first["version"] == 1
    rows = await db.fetch(
        "SELECT content FROM document_snapshots WHERE document_id = $1", doc["id"]
    )
    # Redis is ahead of Postgres: the snapshot takes the newest acknowledged content.
    assert [r["content"] for r in rows] == ["unsaved but acknowledged"]


async def test_a_snapshot_of_a_deleted_document_fails_with_a_reason(
    api: httpx.AsyncClient, ctx: dict[str, Any]
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    assert (await api.delete(f"/v1/documents/{doc['id']}", headers=alice.auth)).status_code == 204
    with pytest.raises(NotFound, match="no longer exists"):
        await snapshot_document(
            ctx, doc_id=doc["id"], user_id=alice.user_id, tenant_id=alice.tenant_id, label="x"
        )


def test_transient_failures_retry_until_the_last_try_which_raises(settings: Settings) -> None:
    error = ConnectionError("postgres is away")
    assert isinstance(_retry_or_raise({"settings": settings, "job_try": 1}, error), Retry)
    last = {"settings": settings, "job_try": settings.job_max_tries}
    with pytest.raises(ConnectionError, match="postgres is away"):
        _retry_or_raise(last, error)


# End to end, with a real flusher process ------------------------------------------------------
async def wait_job(
    api: httpx.AsyncClient, user: User, job_id: str, within_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        state: dict[str, Any] = (await api.get(f"/v1/jobs/{job_id}", headers=user.auth)).json()
        if state["status"] in ("complete", "failed") or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.05)


def flusher_process(settings: Settings, tmp_path: Path) -> Any:
    env = settings_env(settings)
    return running("flusher", "services.flusher", env, tmp_path, log_ready("flusher ready"))


async def test_save_and_snapshot_jobs_complete_through_a_real_worker(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path, db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, title="plan")
    base = f"/v1/documents/{doc['id']}"
    await edit(api, alice, doc["id"], "saved now")
    async with flusher_process(settings, tmp_path):
        save = (await api.post(f"{base}/save", headers=alice.auth)).json()
        snap = (
            await api.post(f"{base}/snapshots", json={"label": "v1"}, headers=alice.auth)
        ).json()
        saved = await wait_job(api, alice, save["job_id"], 15)
        snapped = await wait_job(api, alice, snap["job_id"], 15)
    assert saved["status"] == "complete", saved
    assert saved["result"] == {"document_id": doc["id"], "saved_version": 1}
    assert await db.fetchval("SELECT version FROM documents WHERE id = $1", doc["id"]) == 1
    assert snapped["status"] == "complete", snapped
    listed = (await api.get(f"{base}/snapshots", headers=alice.auth)).json()
    assert [(s["label"], s["version"]) for s in listed] == [("v1", 1)]
    one = await api.get(f"{base}/snapshots/{listed[0]['id']}", headers=alice.auth)
    assert one.json()["content"] == "saved now"


async def test_a_job_that_cannot_succeed_ends_failed_with_its_reason(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    base = f"/v1/documents/{doc['id']}"
    # Enqueued while the document exists; deleted before any worker runs the job.
    job = (await api.post(f"{base}/snapshots", json={"label": "late"}, headers=alice.auth)).json()
    assert (await api.delete(base, headers=alice.auth)).status_code == 204
    async with flusher_process(settings, tmp_path):
        state = await wait_job(api, alice, job["job_id"], 15)
    assert state["status"] == "failed", state
    assert "no longer exists" in state["error"]


@pytest.mark.slow
async def test_a_job_whose_worker_dies_mid_job_runs_again_with_the_same_outcome(
    api: httpx.AsyncClient, migrated: Any, tmp_path: Path, db: asyncpg.Connection
) -> None:
    # A short job timeout, so the dead worker's claim on the job expires within the test.
    settings = make_settings(migrated, job_timeout_s=1, flush_interval=1)
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, content="keep me")
    job = (
        await api.post(
            f"/v1/documents/{doc['id']}/snapshots", json={"label": "v"}, headers=alice.auth
        )
    ).json()
    # Park the job: an uncommitted row with its job id blocks the job's insert on the unique key.
    blocker = await asyncpg.connect(settings.dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute(
        "INSERT INTO document_snapshots (id, document_id, label, content, version, job_id)"
        " VALUES (gen_random_uuid(), $1, 'blocker', '', 0, $2)",
        doc["id"],
        job["job_id"],
    )
    async with flusher_process(settings, tmp_path) as flusher:
        assert isinstance(flusher, Service)
        deadline = time.monotonic() + 15
        while (await wait_job(api, alice, job["job_id"], 0))["status"] != "in_progress":
            assert time.monotonic() < deadline, flusher.tail()
            await asyncio.sleep(0.05)
        flusher.send(signal.SIGKILL)
        await flusher.wait(10)
        await tx.rollback()
        await blocker.close()
        await flusher.restart()
        state = await wait_job(api, alice, job["job_id"], 40)
    assert state["status"] == "complete", state
    rows = await db.fetch("SELECT label, content FROM document_snapshots")
    assert [(r["label"], r["content"]) for r in rows] == [("v", "keep me")]
