"""Matcher fixtures: a real uvicorn server in the test's event loop on a free port, users with
profiles, and WebSocket clients (the `websockets` library uvicorn[standard] brings)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from services.matcher.app import create_app
from services.matcher.pool import Pool
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from tests.support.servers import served
from tests.support.users import User, signup

Serve = Callable[..., Any]


@asynccontextmanager
async def matcher_server(settings: Settings) -> AsyncIterator[str]:
    """The matcher app under uvicorn, configured as services/matcher/__main__.py runs it."""
    async with served(
        create_app(settings),
        ws_per_message_deflate=False,
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
    ) as port:
        yield f"ws://127.0.0.1:{port}"


@pytest.fixture
async def matcher_url(settings: Settings) -> AsyncIterator[str]:
    async with matcher_server(settings) as url:
        yield url


@pytest.fixture
def scripts(redis: Redis, keys: Keys) -> Scripts:
    return Scripts(redis, keys)


@pytest.fixture
def pool(settings: Settings, scripts: Scripts) -> Pool:
    return Pool(settings, scripts)


async def set_profile(
    db: asyncpg.Connection,
    user: User,
    interests: Sequence[str],
    language: str = "en",
    region: str | None = None,
) -> None:
    await db.execute(
        "INSERT INTO profiles (user_id, language, region, interests) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (user_id) DO UPDATE SET language = $2, region = $3, interests = $4",
        user.user_id,
        language,
        region,
        list(interests),
    )


async def make_user(
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    name: str,
    interests: Sequence[str],
    language: str = "en",
    region: str | None = None,
) -> User:
    user = await signup(api, name)
    await set_profile(db, user, interests, language, region)
    return user


def open_socket(url: str, user: User | None, *, origin: str | None = None, **kwargs: Any) -> Any:
    headers = {} if user is None else {"Authorization": f"Bearer {user.token}"}
    if origin is not None:
        headers["Origin"] = origin
    return connect(f"{url}/v1/ws/match", additional_headers=headers, **kwargs)


async def recv(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), within))
    return frame


async def recv_type(ws: ClientConnection, kind: str, within: float = 5.0) -> dict[str, Any]:
    """The next frame, which must be of this type."""
    frame = await recv(ws, within)
    assert frame["type"] == kind, frame
    return frame


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message))


async def scrape(client: httpx.AsyncClient, http_url: str, name: str) -> float:
    """One unlabelled sample from the matcher's /metrics."""
    reply = await client.get(f"{http_url}/metrics")
    assert reply.status_code == 200, reply.text
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")
