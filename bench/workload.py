"""The simulated typists: accounts and documents made through Redline's own API, and the edit
requests, prepared once as raw HTTP/1.1 bytes for every system under test."""

from __future__ import annotations

import asyncio
import json
import random
import string
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

PASSWORD = "bench password"
ALPHABET = string.ascii_lowercase + "      "
VARIANTS = 8  # distinct contents each editor cycles through
T = TypeVar("T")


@dataclass(frozen=True)
class Workload:
    tokens: list[str]  # one per editor
    doc_ids: list[str]
    tenant_id: str

    def doc_of(self, editor: int) -> str:
        return self.doc_ids[editor % len(self.doc_ids)]


def text(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(ALPHABET, k=size))


async def bounded(jobs: Sequence[Awaitable[T]], limit: int = 8) -> list[T]:
    """Await the (not yet started) coroutines, at most `limit` at a time."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    return await asyncio.gather(*(one(job) for job in jobs))


async def _call(client: httpx.AsyncClient, method: str, path: str, want: int, **kw: Any) -> Any:
    r = await client.request(method, path, **kw)
    if r.status_code != want:
        raise RuntimeError(f"{method} {path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


async def create(
    port: int,
    editors: int,
    docs: int,
    content_bytes: int,
    rng: random.Random,
    name: str = "editor",
) -> Workload:
    """One tenant: its owner is editor 0, every other editor a member with a session of its own;
    the owner creates the documents (each with `content_bytes` of content). Usernames are `name`
    and a number: a scenario that makes its own tenant in the same run names it apart."""
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=30, trust_env=False) as client:
        owner = await _call(
            client,
            "POST",
            "/v1/auth/signup",
            201,
            json={"username": f"{name}0000", "password": PASSWORD},
        )
        auth = {"Authorization": f"Bearer {owner['token']}"}

        async def member(i: int) -> str:
            creds = {"username": f"{name}{i:04d}", "password": PASSWORD}
            await _call(client, "POST", "/v1/tenant/members", 201, json=creds, headers=auth)
            session = await _call(client, "POST", "/v1/auth/login", 200, json=creds)
            return str(session["token"])

        tokens = await bounded([member(i) for i in range(1, editors)])
        doc_ids = await documents(client, str(owner["token"]), content(rng, docs, content_bytes))
    return Workload([str(owner["token"]), *tokens], doc_ids, str(owner["tenant_id"]))


def content(rng: random.Random, docs: int, content_bytes: int) -> list[str]:
    return [text(rng, content_bytes) for _ in range(docs)]


async def documents(client: httpx.AsyncClient, token: str, contents: list[str]) -> list[str]:
    """One document per content, created as the user of `token`; their ids."""
    auth = {"Authorization": f"Bearer {token}"}

    async def document(j: int) -> str:
        body = {"title": f"bench document {j}", "content": contents[j]}
        doc = await _call(client, "POST", "/v1/documents", 201, json=body, headers=auth)
        return str(doc["id"])

    return await bounded([document(j) for j in range(len(contents))])


def requests(port: int, work: Workload, content_bytes: int, rng: random.Random) -> list[bytes]:
    """Edit requests, ordered so that consecutive requests come from consecutive editors: request
    n is editor n mod editors typing its (n div editors mod VARIANTS)-th version."""
    bodies = [json.dumps({"content": text(rng, content_bytes)}).encode() for _ in range(VARIANTS)]
    out: list[bytes] = []
    for body in bodies:
        for editor, token in enumerate(work.tokens):
            head = (
                f"PUT /v1/documents/{work.doc_of(editor)}/content HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {token}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            )
            out.append(head.encode() + body)
    return out
