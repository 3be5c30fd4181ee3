from __future__ import annotations

import httpx

from tests.support.users import create_doc, edit, signup


async def test_signup_create_edit_read(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, content="hello")
    assert doc["version"] == 0 and doc["status"] == "saved"
    r = await edit(api, alice, doc["id"], "hello world")
    assert r.status_code == 202, r.text
    assert r.json() == {"id": doc["id"], "version": 1, "saved_version": 0, "status": "saving"}
    r = await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)
    assert r.status_code == 200
    assert r.json()["content"] == "hello world"
    assert r.json()["version"] == 1
