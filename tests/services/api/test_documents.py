from __future__ import annotations

import base64
import uuid

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from tests.support.users import add_member, create_doc, edit, signup

JSON = {"content-type": "application/json"}


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


async def test_a_delete_that_failed_on_postgres_is_finished_by_its_retry(
    api: httpx.AsyncClient, settings: Settings, redis: Redis, keys: Keys, db: asyncpg.Connection
) -> None:
    """The tombstone is stored first; when the Postgres delete then fails (here: never runs),
    the client's retry deletes the row (204), instead of a 404 that left it listed and let it
    come back when the tombstone expired. Another tenant's retry still finds nothing."""
    alice, mallory = await signup(api, "alice"), await signup(api, "mallory")
    doc = await create_doc(api, alice)
    assert (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).status_code == 200
    await Scripts(redis, keys).delete(doc["id"], 60_000, alice.user_id)  # the request's first half
    assert await db.fetchval("SELECT count(*) FROM documents WHERE id = $1", doc["id"]) == 1
    url = f"/v1/documents/{doc['id']}"
    assert (await api.delete(url, headers=mallory.auth)).status_code == 404
    assert (await api.delete(url, headers=alice.auth)).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM documents WHERE id = $1", doc["id"]) == 0
    assert (await api.get("/v1/documents", headers=alice.auth)).json()["items"] == []
    assert (await api.delete(url, headers=alice.auth)).status_code == 404
    assert (await api.get(url, headers=alice.auth)).status_code == 404
    assert (await edit(api, alice, doc["id"], "back?")).status_code == 404


# Text Postgres cannot store (issue 10): NUL in `text`, and lone surrogates (no UTF-8 form). A
# body may carry a surrogate as a JSON escape or as raw bytes; both are refused before any work.
NUL = "a\x00b"
SURROGATE_BODIES = (
    b'{"content": "a\\ud800b"}',  # lone high surrogate, escaped
    b'{"content": "a\\udc00b"}',  # lone low surrogate, escaped
    b'{"content": "a\xed\xa0\x80b"}',  # a surrogate's would-be UTF-8 bytes (invalid UTF-8)
)


def assert_422(r: httpx.Response, field: str | None) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    if field is not None:  # the problem names the field (a surrogate fails JSON parsing first)
        assert any(e["loc"][-1] == field for e in r.json()["errors"]), r.json()


async def test_nul_in_a_new_documents_title_or_content_is_422_not_500(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    for body, field in (
        ({"title": NUL}, "title"),
        ({"title": "ok", "content": NUL}, "content"),
        ({"title": "\x00"}, "title"),
    ):
        assert_422(await api.post("/v1/documents", json=body, headers=alice.auth), field)
    for raw in (b'{"title": "a\\ud800"}', b'{"title": "ok", "content": "\\udfff"}'):
        r = await api.post("/v1/documents", content=raw, headers=alice.auth | JSON)
        assert_422(r, None)
    assert await db.fetchval("SELECT count(*) FROM documents") == 0


async def test_edits_postgres_cannot_store_are_refused_on_both_edit_paths(
    api: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice, content="kept")
    # The canonical id takes the fast lane (editlane.py); the upper-case one the FastAPI route.
    for doc_id in (doc["id"], doc["id"].upper()):
        url = f"/v1/documents/{doc_id}/content"
        assert_422(await api.put(url, json={"content": NUL}, headers=alice.auth), "content")
        assert_422(await api.put(url, json={"content": "\x00"}, headers=alice.auth), "content")
        for raw in SURROGATE_BODIES:
            assert_422(await api.put(url, content=raw, headers=alice.auth | JSON), None)
    fields = await redis.hmget(keys.doc(doc["id"]), ["v", "c"])
    assert fields == ["0", "kept"], "a refused edit changes nothing"
    assert await redis.zcard(keys.doc_dirty(doc["id"])) == 0
    # Text that only looks unusual is fine: a real astral character, U+FFFF, a C1 control.
    ok = "emoji \U0001f600, \uffff, \x7f\x9f"
    assert (await edit(api, alice, doc["id"], ok)).status_code == 202
    got = (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).json()
    assert got["content"] == ok


@pytest.mark.parametrize(
    "stamp",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00", "2024-01-01T00:00:00"],
)
async def test_a_cursor_out_of_range_or_without_offset_is_422(
    api: httpx.AsyncClient, stamp: str
) -> None:
    alice = await signup(api, "alice")
    await create_doc(api, alice)
    raw = f"{stamp}|{uuid.uuid4()}".encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = await api.get("/v1/documents", params={"cursor": cursor}, headers=alice.auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"


async def test_a_snapshot_label_with_nul_is_422_at_the_entrance(
    api: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/snapshots"
    assert_422(await api.post(url, json={"label": NUL}, headers=alice.auth), "label")
    r = await api.post(url, content=b'{"label": "\\ud800"}', headers=alice.auth | JSON)
    assert_422(r, None)
    assert await redis.zcard(keys.queue_name) == 0, "no job was queued"
