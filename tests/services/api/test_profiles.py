"""Profiles over HTTP: visibility, validation, read-your-writes across api instances, one
Postgres load for a stampede, and reads that survive a dead cache Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import pytest

from deploy.embedded import Valkey, free_port
from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.support.apps import api_app, resources
from tests.support.users import add_member, signup

PUBLIC = {"user_id", "display_name", "bio", "language", "region", "interests", "updated_at"}


async def test_profiles_are_public_but_tenant_and_login_name_stay_in_the_tenant(
    api: httpx.AsyncClient,
) -> None:
    alice = await signup(api, "alice")
    bob = await add_member(api, alice, "bob")
    mallory = await signup(api, "mallory")
    r = await api.patch(
        "/v1/users/me/profile",
        json={"display_name": "Alice", "interests": ["chess", "rock-climbing", "chess"]},
        headers=alice.auth,
    )
    assert r.status_code == 200, r.text
    assert r.json()["interests"] == ["chess", "rock-climbing"]
    url = f"/v1/users/{alice.user_id}/profile"
    same = (await api.get(url, headers=bob.auth)).json()
    assert same["username"] == "alice" and same["tenant_id"] == alice.tenant_id
    other = await api.get(url, headers=mallory.auth)
    assert other.status_code == 200
    assert set(other.json()) == PUBLIC
    assert other.json()["display_name"] == "Alice"
    mine = (await api.get("/v1/users/me/profile", headers=alice.auth)).json()
    assert mine["language"] == "en" and mine["region"] is None
    assert (await api.get(url)).status_code == 401


async def test_unknown_user_is_404_and_cached_as_missing(
    settings: Settings, migrated: Servers
) -> None:
    async with api_app(settings) as (app, api):
        alice = await signup(api, "alice")
        ghost = "/v1/users/00000000-0000-4000-8000-000000000000/profile"
        for _ in range(3):
            r = await api.get(ghost, headers=alice.auth)
            assert r.status_code == 404
            assert r.headers["content-type"] == "application/problem+json"
        stats = resources(app).profiles.cache.stats.of("profile")
        assert (stats.loads, stats.negative_hits) == (1, 2)
        assert (
            await api.get("/v1/users/not-a-uuid/profile", headers=alice.auth)
        ).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"tenant_id": "00000000-0000-4000-8000-000000000000"},
        {"role": "owner"},
        {"user_id": "00000000-0000-4000-8000-000000000000"},
        {"username": "root"},
        {"display_name": "ok", "tenant_id": "00000000-0000-4000-8000-000000000000"},
        {"display_name": None},
        {"interests": ["Not A Slug"]},
        {"language": "english"},
        {"region": "fr"},
        {"interests": [f"i{n}" for n in range(21)]},
    ],
)
async def test_mass_assignment_and_bad_fields_are_422_and_change_nothing(
    api: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, object]
) -> None:
    alice = await signup(api, "alice")
    r = await api.patch("/v1/users/me/profile", json=body, headers=alice.auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    row = await db.fetchrow("SELECT tenant_id::text, role FROM users WHERE id = $1", alice.user_id)
    assert row is not None and (row[0], row[1]) == (alice.tenant_id, "owner")
    assert await db.fetchval("SELECT count(*) FROM profiles") == 0


async def test_region_can_be_cleared_with_null(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    r = await api.patch("/v1/users/me/profile", json={"region": "FR"}, headers=alice.auth)
    assert r.json()["region"] == "FR"
    r = await api.patch("/v1/users/me/profile", json={"region": None}, headers=alice.auth)
    assert r.status_code == 200 and r.json()["region"] is None


async def test_200_concurrent_cold_requests_load_postgres_once(
    settings: Settings, migrated: Servers
) -> None:
    async with api_app(settings) as (app, api):
        alice = await signup(api, "alice")
        bob = await signup(api, "bob")
        url = f"/v1/users/{alice.user_id}/profile"
        replies = await asyncio.gather(*(api.get(url, headers=bob.auth) for _ in range(200)))
        assert {r.status_code for r in replies} == {200}
        assert {r.json()["user_id"] for r in replies} == {alice.user_id}
        stats = resources(app).profiles.cache.stats.of("profile")
        assert stats.loads == 1
        assert stats.fallbacks == 0
        r = await api.get("/v1/stats/cache", headers=bob.auth)
        assert r.json()["families"]["profile"]["loads"] == 1


async def test_patch_then_get_from_another_instance_sees_the_new_value(
    settings: Settings, migrated: Servers
) -> None:
    async with api_app(settings) as (_, writer), api_app(settings) as (_, reader):
        alice = await signup(writer, "alice")
        bob = await signup(writer, "bob")
        url = f"/v1/users/{alice.user_id}/profile"
        for i in range(15):
            # Warm the reader's cache with the current value, then write through the other.
            assert (await reader.get(url, headers=bob.auth)).status_code == 200
            r = await writer.patch(
                "/v1/users/me/profile", json={"bio": f"v{i}"}, headers=alice.auth
            )
            assert r.status_code == 200
            assert (await reader.get(url, headers=bob.auth)).json()["bio"] == f"v{i}"


async def test_loads_racing_a_patch_never_leave_a_stale_value(
    settings: Settings, migrated: Servers
) -> None:
    # Short TTL-free race: many cold reads in flight on one instance while the other writes.
    async with api_app(settings) as (_, writer), api_app(settings) as (_, reader):
        alice = await signup(writer, "alice")
        bob = await signup(writer, "bob")
        url = f"/v1/users/{alice.user_id}/profile"
        for i in range(20):
            readers = [asyncio.create_task(reader.get(url, headers=bob.auth)) for _ in range(10)]
            r = await writer.patch(
                "/v1/users/me/profile", json={"display_name": f"n{i}"}, headers=alice.auth
            )
            assert r.status_code == 200
            after = await asyncio.gather(*(reader.get(url, headers=bob.auth) for _ in range(5)))
            assert {a.json()["display_name"] for a in after} == {f"n{i}"}, i
            await asyncio.gather(*readers)
            assert (await reader.get(url, headers=bob.auth)).json()["display_name"] == f"n{i}"


async def test_login_records_last_seen(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    alice = await signup(api, "alice")
    await db.execute("UPDATE users SET last_seen_at = now() - interval '1 day'")
    r = await api.post("/v1/auth/login", json={"username": "alice", "password": "correct horse"})
    assert r.status_code == 200
    age = await db.fetchval(
        "SELECT extract(epoch FROM now() - last_seen_at) FROM users WHERE id = $1", alice.user_id
    )
    assert age < 60


async def test_reads_survive_a_stopped_cache_redis(migrated: Servers, tmp_path: Path) -> None:
    cache_server = Valkey(tmp_path / "cache", free_port(), aof=False)
    cache_server.start()
    try:
        settings = make_settings(migrated, cache_redis_url=cache_server.url, cache_retry_s=0.2)
        async with api_app(settings) as (app, api):
            alice = await signup(api, "alice")
            bob = await signup(api, "bob")
            url = f"/v1/users/{alice.user_id}/profile"
            await api.patch("/v1/users/me/profile", json={"bio": "before"}, headers=alice.auth)
            assert (await api.get(url, headers=bob.auth)).json()["bio"] == "before"
            cache_server.stop()
            for _ in range(3):
                r = await api.get(url, headers=bob.auth)
                assert r.status_code == 200 and r.json()["bio"] == "before"
            # The write is saved, but it cannot be acknowledged without invalidating: 503.
            r = await api.patch("/v1/users/me/profile", json={"bio": "after"}, headers=alice.auth)
            assert r.status_code == 503 and "retry-after" in r.headers
            assert "saved" in r.json()["detail"]
            r = await api.get(url, headers=bob.auth)
            assert r.status_code == 200 and r.json()["bio"] == "after"
            stats = resources(app).profiles.cache.stats.of("profile")
            assert stats.fallbacks >= 4
            s = (await api.get("/v1/stats/cache", headers=bob.auth)).json()
            assert s["status"] == "warning" and s["cache_redis"]["up"] is False
            assert any("cache Redis" in w for w in s["warnings"])
            # Readiness names the dead cache but stays 200: the API still serves everything.
            ready = await api.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert "cache_redis" in ready.text
            metrics = (await api.get("/metrics")).text
            assert 'redline_cache_fallbacks_total{family="profile"}' in metrics
    finally:
        cache_server.stop()


# Text Postgres cannot store (issue 10): NUL in `text`, lone surrogates (no UTF-8 form).
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"bio": "a\x00b"}, "bio"),
        ({"display_name": "Al\x00ice"}, "display_name"),
        ({"display_name": "\x00"}, "display_name"),
    ],
)
async def test_nul_in_a_profile_is_422_not_500(
    api: httpx.AsyncClient, db: asyncpg.Connection, body: dict[str, str], field: str
) -> None:
    alice = await signup(api, "alice")
    r = await api.patch("/v1/users/me/profile", json=body, headers=alice.auth)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert [e["loc"][-1] for e in r.json()["errors"]] == [field]
    assert await db.fetchval("SELECT count(*) FROM profiles") == 0


async def test_a_lone_surrogate_in_a_profile_is_422(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    alice = await signup(api, "alice")
    for raw in (b'{"bio": "\\ud800"}', b'{"display_name": "x\xed\xb0\x80"}'):
        r = await api.patch("/v1/users/me/profile", content=raw, headers=alice.auth | JSON)
        assert r.status_code == 422, r.text
    assert await db.fetchval("SELECT count(*) FROM profiles") == 0


@pytest.mark.parametrize("path", ["/v1/auth/signup", "/v1/auth/login"])
async def test_bad_text_in_a_username_or_password_is_422_never_500(
    api: httpx.AsyncClient, db: asyncpg.Connection, path: str
) -> None:
    for raw in (
        b'{"username": "al\\u0000ice", "password": "correct horse"}',
        b'{"username": "al\\ud800ice", "password": "correct horse"}',
        b'{"username": "alice", "password": "correct \\ud800horse"}',
        b'{"username": "alice", "password": "correct \xed\xa0\x80horse"}',
    ):
        r = await api.post(path, content=raw, headers=JSON)
        assert r.status_code == 422, (raw, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert await db.fetchval("SELECT count(*) FROM users") == 0


async def test_a_password_may_hold_nul_it_is_only_hashed(api: httpx.AsyncClient) -> None:
    password = "correct\x00horse"
    await signup(api, "alice", password=password)
    ok = await api.post("/v1/auth/login", json={"username": "alice", "password": password})
    assert ok.status_code == 200, ok.text
    bad = await api.post("/v1/auth/login", json={"username": "alice", "password": "correct horse"})
    assert bad.status_code == 401
