"""Tenant isolation, authentication, and bad input: clear 4xx answers, never a 500."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.users import create_doc, edit, signup


async def test_another_tenants_document_is_404_everywhere(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    mallory = await signup(api, "mallory")
    doc = await create_doc(api, alice, content="secret")
    url = f"/v1/documents/{doc['id']}"
    attempts = [
        ("GET", url, None),
        ("GET", f"{url}/status", None),
        ("PUT", f"{url}/content", {"content": "pwned"}),
        ("POST", f"{url}/presence", None),
        ("DELETE", f"{url}/presence", None),
        ("DELETE", url, None),
    ]
    missing = f"/v1/documents/{uuid.uuid4()}"
    for method, path, body in attempts:
        theirs = await api.request(method, path, json=body, headers=mallory.auth)
        nowhere = await api.request(
            method, path.replace(url, missing), json=body, headers=mallory.auth
        )
        assert theirs.status_code == 404, (method, path)
        # Indistinguishable from a document that does not exist.
        assert theirs.json()["title"] == nowhere.json()["title"]
        assert theirs.json()["detail"].replace(doc["id"], "X") == nowhere.json()["detail"].replace(
            missing.rsplit("/", 1)[1], "X"
        )
    listed = (await api.get("/v1/documents", headers=mallory.auth)).json()["items"]
    assert listed == []
    got = (await api.get(url, headers=alice.auth)).json()
    assert (got["content"], got["version"]) == ("secret", 0)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-real-token"},
    ],
)
async def test_missing_or_bad_token_is_401(api: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for method, path in [
        ("GET", "/v1/documents"),
        ("GET", "/v1/auth/me"),
        ("POST", "/v1/documents"),
    ]:
        r = await api.request(method, path, headers=headers, json={"title": "x"})
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"] == "application/problem+json"


async def test_logout_ends_the_session(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    assert (await api.post("/v1/auth/logout", headers=alice.auth)).status_code == 204
    assert (await api.get("/v1/auth/me", headers=alice.auth)).status_code == 401


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{not json", "malformed"),
        (b'{"content": 5}', "wrong type"),
        (b'{"content": "x", "base_version": "one"}', "wrong type"),
        (b'{"content": "x", "base_version": -1}', "negative version"),
        (b'{"content": "x", "version": 99}', "unknown field"),
        (b"[]", "not an object"),
        (b"", "empty"),
    ],
)
async def test_bad_edit_bodies_are_422(api: httpx.AsyncClient, body: bytes, why: str) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    r = await api.put(
        f"/v1/documents/{doc['id']}/content",
        content=body,
        headers=alice.auth | {"content-type": "application/json"},
    )
    assert r.status_code == 422, why
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"], why
    got = (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).json()
    assert got["version"] == 0, "nothing changed"


async def test_bad_ids_and_fields_are_422(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    assert (await api.get("/v1/documents/not-a-uuid", headers=alice.auth)).status_code == 422
    r = await api.post("/v1/documents", json={"title": ""}, headers=alice.auth)
    assert r.status_code == 422
    r = await api.post(
        "/v1/documents", json={"title": "x", "tenant_id": str(uuid.uuid4())}, headers=alice.auth
    )
    assert r.status_code == 422, "mass assignment is refused"
    r = await api.get("/v1/documents", params={"limit": 0}, headers=alice.auth)
    assert r.status_code == 422
    r = await api.post("/v1/auth/signup", json={"username": "x", "password": "short"})
    assert r.status_code == 422


async def test_oversize_content_is_413_and_changes_nothing(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    limit = 64 * 1024  # tests/conftest.py: max_document_bytes
    url = f"/v1/documents/{doc['id']}/content"
    # Just over the content limit, well under the body cap: refused after parsing.
    r = await edit(api, alice, doc["id"], "é" * (limit // 2 + 1))
    assert r.status_code == 413
    assert r.json()["limit"] == limit
    # Exactly at the limit is fine.
    assert (await edit(api, alice, doc["id"], "a" * limit)).status_code == 202
    # A declared length over the body cap is refused before the body is read.
    huge = b'{"content": "' + b"a" * (3 * limit + 70_000) + b'"}'
    r = await api.put(url, content=huge, headers=alice.auth)
    assert r.status_code == 413
    # So is a chunked body with no declared length, cut off as it streams.

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"content": "'
        for _ in range(300):
            yield b"a" * 1024
        yield b'"}'

    r = await api.put(url, content=chunks(), headers=alice.auth)
    assert r.status_code == 413
    got = (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).json()
    assert got["version"] == 1


async def test_duplicate_username_is_409(api: httpx.AsyncClient) -> None:
    await signup(api, "alice")
    r = await api.post("/v1/auth/signup", json={"username": "ALICE", "password": "whatever1"})
    assert r.status_code == 409


async def test_only_owners_add_members(api: httpx.AsyncClient) -> None:
    from tests.support.users import add_member

    owner = await signup(api, "owner")
    member = await add_member(api, owner, "member")
    r = await api.post(
        "/v1/tenant/members",
        json={"username": "third", "password": "password1"},
        headers=member.auth,
    )
    assert r.status_code == 403
