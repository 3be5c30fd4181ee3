"""Helpers for tests that act as users of the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class User:
    user_id: str
    tenant_id: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def signup(client: httpx.AsyncClient, username: str, password: str = "correct horse") -> User:
    r = await client.post("/v1/auth/signup", json={"username": username, "password": password})
    assert r.status_code == 201, r.text
    body = r.json()
    return User(body["user_id"], body["tenant_id"], body["token"])


async def add_member(client: httpx.AsyncClient, owner: User, username: str) -> User:
    password = "member password"
    r = await client.post(
        "/v1/tenant/members", json={"username": username, "password": password}, headers=owner.auth
    )
    assert r.status_code == 201, r.text
    r = await client.post("/v1/auth/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    body = r.json()
    return User(body["user_id"], body["tenant_id"], body["token"])


async def create_doc(
    client: httpx.AsyncClient, user: User, title: str = "notes", content: str = ""
) -> dict[str, Any]:
    r = await client.post(
        "/v1/documents", json={"title": title, "content": content}, headers=user.auth
    )
    assert r.status_code == 201, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def edit(
    client: httpx.AsyncClient, user: User, doc_id: str, content: str, base: int | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"content": content}
    if base is not None:
        body["base_version"] = base
    return await client.put(f"/v1/documents/{doc_id}/content", json=body, headers=user.auth)
