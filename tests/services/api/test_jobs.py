"""Save now and snapshots answer 202 with a job id; job state is visible to its owner only.
No worker runs here, so every job stays queued (the worker side: tests/services/flusher)."""

from __future__ import annotations

import httpx

from tests.support.users import add_member, create_doc, edit, signup


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
