from __future__ import annotations

import httpx
from redis.asyncio import Redis

from shared.keys import Keys
from shared.settings import Settings
from tests.support.users import add_member, create_doc, edit, signup


async def test_create_edit_read_your_writes(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, title="Plan", content="hello")
    assert (doc["version"], doc["saved_version"], doc["status"]) == (0, 0, "saved")
    r = await edit(api, alice, doc["id"], "hello world")
    assert r.status_code == 202
    assert r.json() == {"id": doc["id"], "version": 1, "saved_version": 0, "status": "saving"}
    got = (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).json()
    assert (got["content"], got["version"], got["title"]) == ("hello world", 1, "Plan")
    assert got["updated_by"] == alice.user_id and got["dirty_since"] is not None


async def test_stale_base_version_is_409_with_current_version(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    assert (await edit(api, alice, doc["id"], "a", base=0)).status_code == 202
    r = await edit(api, alice, doc["id"], "b", base=0)
    assert r.status_code == 409
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["current_version"] == 1
    got = (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).json()
    assert got["content"] == "a", "a refused edit changes nothing"


async def test_reads_and_edits_reload_from_postgres_when_redis_dropped_the_clean_copy(
    api: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, content="from postgres")
    await redis.delete(keys.doc(doc["id"]))  # as if its clean TTL had run out
    got = (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).json()
    assert got["content"] == "from postgres"
    await redis.delete(keys.doc(doc["id"]))
    r = await edit(api, alice, doc["id"], "edited", base=0)
    assert r.status_code == 202 and r.json()["version"] == 1


async def test_members_of_a_tenant_share_its_documents(api: httpx.AsyncClient) -> None:
    owner = await signup(api, "owner")
    member = await add_member(api, owner, "member")
    assert member.tenant_id == owner.tenant_id
    doc = await create_doc(api, owner)
    assert (await edit(api, member, doc["id"], "by member")).status_code == 202
    me = (await api.get("/v1/auth/me", headers=member.auth)).json()
    assert me["role"] == "member"


async def test_list_is_paginated_newest_first_and_shows_live_versions(
    api: httpx.AsyncClient,
) -> None:
    alice = await signup(api, "alice")
    ids = [(await create_doc(api, alice, title=f"doc {i}"))["id"] for i in range(5)]
    await edit(api, alice, ids[0], "edited")
    seen: list[dict[str, object]] = []
    cursor = None
    for _ in range(5):
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/documents", params=params, headers=alice.auth)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [d["id"] for d in seen] == ids[::-1]
    first = next(d for d in seen if d["id"] == ids[0])
    assert (first["version"], first["status"]) == (1, "saving")
    bad = await api.get("/v1/documents", params={"cursor": "nonsense"}, headers=alice.auth)
    assert bad.status_code == 422


async def test_presence_and_status(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    bob = await add_member(api, alice, "bob")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}"
    assert (await api.post(f"{url}/presence", headers=alice.auth)).json() == {
        "editors": [alice.user_id]
    }
    joined = (await api.post(f"{url}/presence", headers=bob.auth)).json()["editors"]
    assert sorted(joined) == sorted([alice.user_id, bob.user_id])
    await edit(api, alice, doc["id"], "typing")
    status = (await api.get(f"{url}/status", headers=alice.auth)).json()
    assert (status["version"], status["saved_version"], status["status"]) == (1, 0, "saving")
    assert sorted(status["editors"]) == sorted(joined)
    left = (await api.delete(f"{url}/presence", headers=alice.auth)).json()
    assert left == {"editors": [bob.user_id]}


async def test_delete(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    await edit(api, alice, doc["id"], "unsaved")
    assert (await api.delete(f"/v1/documents/{doc['id']}", headers=alice.auth)).status_code == 204
    for method, path in [
        ("GET", ""),
        ("GET", "/status"),
        ("POST", "/presence"),
        ("DELETE", ""),
    ]:
        r = await api.request(method, f"/v1/documents/{doc['id']}{path}", headers=alice.auth)
        assert r.status_code == 404, (method, path)
    assert (await edit(api, alice, doc["id"], "again")).status_code == 404
    listed = (await api.get("/v1/documents", headers=alice.auth)).json()["items"]
    assert listed == []
