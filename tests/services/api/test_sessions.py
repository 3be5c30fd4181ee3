"""Sessions cached in each API process: a logout must still end the session everywhere at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI

from services.api.app import create_app
from shared.domain.accounts import Principal, SessionCache, token_hash
from shared.settings import Settings
from tests.support.users import create_doc, edit, signup


@pytest.fixture
async def two_apis(settings: Settings) -> AsyncIterator[list[tuple[FastAPI, httpx.AsyncClient]]]:
    """Two API instances on the same Redis, as two processes behind a load balancer would be."""
    out: list[tuple[FastAPI, httpx.AsyncClient]] = []
    # A cache entry lives a minute here: only the revocation can end one within a test.
    settings = settings.model_copy(update={"session_cache_s": 60.0})
    apps = [create_app(settings), create_app(settings)]
    async with apps[0].router.lifespan_context(apps[0]), apps[1].router.lifespan_context(apps[1]):
        for app in apps:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://a")
            out.append((app, client))
        try:
            for app, _ in out:
                await _until(lambda app=app: app.state.resources.accounts.sessions.live)
            yield out
        finally:
            for _, client in out:
                await client.aclose()


async def _until(check: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_logout_on_one_instance_ends_the_cached_session_on_another(
    two_apis: list[tuple[FastAPI, httpx.AsyncClient]],
) -> None:
    (_, a), (app_b, b) = two_apis
    alice = await signup(a, "alice")
    doc_id = (await create_doc(a, alice))["id"]
    # B resolves the session once and caches it.
    assert (await edit(b, alice, doc_id, "from b")).status_code == 202
    cache = app_b.state.resources.accounts.sessions
    assert cache.get(token_hash(alice.token)) is not None
    assert (await a.post("/v1/auth/logout", headers=alice.auth)).status_code == 204
    # The revocation reaches B by pub/sub: with entries cached for a minute, nothing else could
    # drop this one within the wait (how fast it arrives is the bench's to measure).
    await _until(lambda: cache.get(token_hash(alice.token)) is None, within_s=20.0)
    r = await edit(b, alice, doc_id, "after logout")
    assert r.status_code == 401
    assert (await b.get("/v1/auth/me", headers=alice.auth)).status_code == 401


def test_cache_is_used_only_while_revocations_are_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("shared.domain.accounts.time.monotonic", lambda: now[0])
    who = Principal("u", "t", "alice", "owner")
    cache = SessionCache(ttl_s=5)
    cache.put("h", who, cache.epoch)
    assert cache.get("h") is None  # not subscribed: nothing cached
    cache.set_live(True)
    cache.put("h", who, cache.epoch)
    assert cache.get("h") == who
    now[0] += 5.1
    assert cache.get("h") is None  # expired: the next request asks Redis
    # A lookup that started before a revocation is not cached (it may be the revoked one).
    epoch = cache.epoch
    cache.revoke("other")
    cache.put("h", who, epoch)
    assert cache.get("h") is None
    cache.put("h", who, cache.epoch)
    assert cache.get("h") == who
    # Losing the subscription empties the cache and turns it off.
    cache.set_live(False)
    cache.set_live(True)
    assert cache.get("h") is None
