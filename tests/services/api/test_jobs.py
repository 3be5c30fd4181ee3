"""Save now and snapshots answer 202 with a job id; a job's state is visible to whoever may read
its document (the one document access rule), to no one else.
No worker runs here, so every job stays queued (the worker side: tests/services/flusher)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from services.api.app import create_app
from services.api.resources import Resources
from shared.settings import Settings
from tests.support.users import User, add_member, create_doc, edit, signup


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


async def _room(app: FastAPI, creator: User, *members: User) -> str:
    """A room document (no tenant, only `members` may open it), as the matcher creates one."""
    res: Resources = app.state.resources
    who = await res.accounts.resolve(creator.token)
    doc = await res.documents.create(who, "room", "", members=[m.user_id for m in members])
    return doc.id


async def _job(client: httpx.AsyncClient, user: User, job_id: str) -> str:
    r = await client.get(f"/v1/jobs/{job_id}", headers=user.auth)
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


async def test_save_answers_202_with_a_job_that_is_queued(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    r = await api.post(f"/v1/documents/{doc['id']}/save", headers=alice.auth)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.json()["status"] == "queued"
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    state = (await api.get(f"/v1/jobs/{job_id}", headers=alice.auth)).json()
    assert state == {"job_id": job_id, "status": "queued", "result": None, "error": None}


async def test_the_same_save_twice_is_the_same_job_until_the_document_changes(
    api: httpx.AsyncClient,
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/save"
    first = (await api.post(url, headers=alice.auth)).json()["job_id"]
    second = (await api.post(url, headers=alice.auth)).json()["job_id"]
    assert first == second
    assert (await edit(api, alice, doc["id"], "more")).status_code == 202
    third = (await api.post(url, headers=alice.auth)).json()["job_id"]
    assert third != first


async def test_snapshot_job_ids_depend_on_the_label(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/snapshots"
    a = await api.post(url, json={"label": "draft"}, headers=alice.auth)
    b = await api.post(url, json={"label": "draft"}, headers=alice.auth)
    c = await api.post(url, json={"label": "final"}, headers=alice.auth)
    assert a.status_code == b.status_code == c.status_code == 202
    assert a.json()["job_id"] == b.json()["job_id"] != c.json()["job_id"]


async def test_a_job_is_visible_to_its_tenant_and_to_no_one_else(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    bob = await add_member(api, alice, "bob")
    mallory = await signup(api, "mallory")
    doc = await create_doc(api, alice)
    job_id = (await api.post(f"/v1/documents/{doc['id']}/save", headers=alice.auth)).json()[
        "job_id"
    ]
    seen_by_bob = (await api.get(f"/v1/jobs/{job_id}", headers=bob.auth)).json()
    assert seen_by_bob["status"] == "queued"
    seen_by_mallory = (await api.get(f"/v1/jobs/{job_id}", headers=mallory.auth)).json()
    unknown = (await api.get("/v1/jobs/rlt:save:nothing", headers=mallory.auth)).json()
    assert seen_by_mallory["status"] == unknown["status"] == "not_found"
    assert (await api.get(f"/v1/jobs/{job_id}")).status_code == 401


async def test_another_tenants_document_cannot_be_saved_or_snapshotted(
    api: httpx.AsyncClient,
) -> None:
    alice = await signup(api, "alice")
    mallory = await signup(api, "mallory")
    doc = await create_doc(api, alice)
    base = f"/v1/documents/{doc['id']}"
    assert (await api.post(f"{base}/save", headers=mallory.auth)).status_code == 404
    r = await api.post(f"{base}/snapshots", json={"label": "x"}, headers=mallory.auth)
    assert r.status_code == 404
    assert (await api.get(f"{base}/snapshots", headers=mallory.auth)).status_code == 404


async def test_snapshot_labels_are_validated(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/snapshots"
    for body in ({}, {"label": ""}, {"label": "x" * 201}, {"label": "ok", "version": 3}):
        r = await api.post(url, json=body, headers=alice.auth)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"


async def test_a_room_documents_jobs_are_visible_to_its_members_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    # alice and mallory share a room across tenants; carol is alice's colleague, not in it.
    alice = await signup(client, "alice")
    carol = await add_member(client, alice, "carol")
    mallory = await signup(client, "mallory")
    doc_id = await _room(app, alice, alice, mallory)
    base = f"/v1/documents/{doc_id}"
    save = (await client.post(f"{base}/save", headers=alice.auth)).json()["job_id"]
    r = await client.post(f"{base}/snapshots", json={"label": "v1"}, headers=mallory.auth)
    snap = r.json()["job_id"]
    for job_id in (save, snap):
        assert await _job(client, alice, job_id) == "queued"
        assert await _job(client, mallory, job_id) == "queued"
        # Same tenant as alice, who enqueued the save: still not a member, so nothing leaks.
        assert await _job(client, carol, job_id) == "not_found"
    unknown = (await client.get("/v1/jobs/rlt:save:nothing", headers=carol.auth)).json()
    seen = (await client.get(f"/v1/jobs/{save}", headers=carol.auth)).json()
    assert seen == unknown | {"job_id": save}


async def test_a_tenant_documents_job_enqueued_by_a_colleague_follows_the_document(
    client: httpx.AsyncClient,
) -> None:
    alice = await signup(client, "alice")
    bob = await add_member(client, alice, "bob")
    mallory = await signup(client, "mallory")
    doc = await create_doc(client, alice)
    r = await client.post(
        f"/v1/documents/{doc['id']}/snapshots", json={"label": "x"}, headers=bob.auth
    )
    job_id = r.json()["job_id"]
    assert await _job(client, alice, job_id) == "queued"
    assert await _job(client, bob, job_id) == "queued"
    assert await _job(client, mallory, job_id) == "not_found"
    # Once the document is gone, only who asked for the job still sees how it ends.
    r = await client.delete(f"/v1/documents/{doc['id']}", headers=alice.auth)
    assert r.status_code == 204
    assert await _job(client, alice, job_id) == "not_found"
    assert await _job(client, bob, job_id) == "queued"
    assert await _job(client, mallory, job_id) == "not_found"
