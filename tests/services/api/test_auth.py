from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.api.app import create_app
from tests.conftest import Servers, make_settings
from tests.support.users import signup


async def test_signup_login_me(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice", "a long password")
    r = await api.post("/v1/auth/login", json={"username": "alice", "password": "a long password"})
    assert r.status_code == 200
    token = r.json()["token"]
    assert token != alice.token, "each login is a new session"
    me = (await api.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})).json()
    assert me == {
        "user_id": alice.user_id,
        "tenant_id": alice.tenant_id,
        "username": "alice",
        "role": "owner",
    }
    wrong = await api.post("/v1/auth/login", json={"username": "alice", "password": "wrong pass"})
    unknown = await api.post(
        "/v1/auth/login", json={"username": "nobody", "password": "wrong pass"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"], "no user enumeration"


@pytest.fixture
async def strict_api(migrated: Servers) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(migrated, login_rate=3, login_period_s=60))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def attempt(api: httpx.AsyncClient, username: str, **headers: str) -> httpx.Response:
    body = {"username": username, "password": "wrong pass"}
    return await api.post("/v1/auth/login", json=body, headers=headers)


async def test_login_is_rate_limited_per_address_with_retry_after(
    strict_api: httpx.AsyncClient,
) -> None:
    api = strict_api
    codes = [(await attempt(api, f"user{i}")).status_code for i in range(3)]
    assert codes == [401, 401, 401]
    r = await attempt(api, "user3")
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert 1 <= int(r.headers["retry-after"]) <= 20
    assert r.headers["ratelimit-policy"] == '"login";q=3;w=60'
    assert r.headers["ratelimit"].startswith('"login";r=0;t=')
    # A forwarded address from a peer that is not a configured proxy is ignored.
    spoofed = await attempt(api, "user4", **{"X-Forwarded-For": "203.0.113.9"})
    assert spoofed.status_code == 429


async def test_forwarded_address_is_trusted_from_configured_proxies(migrated: Servers) -> None:
    app = create_app(
        make_settings(
            migrated,
            login_rate=3,
            login_name_attempts=3,
            login_period_s=60,
            trusted_proxies="10.0.0.0/8",
        )
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("10.0.0.7", 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            for i in range(3):
                r = await attempt(api, f"user{i}", **{"X-Forwarded-For": "203.0.113.1"})
                assert r.status_code == 401
            assert (
                await attempt(api, "user3", **{"X-Forwarded-For": "203.0.113.1"})
            ).status_code == 429
            # Another client behind the same proxy has its own budget.
            r = await attempt(api, "user4", **{"X-Forwarded-For": "203.0.113.2, 10.0.0.3"})
            assert r.status_code == 401
            # One name guessed from many addresses runs out of its own budget (login-name).
            for i in range(2):
                r = await attempt(api, "user4", **{"X-Forwarded-For": f"198.51.100.{i}"})
                assert r.status_code == 401
            r = await attempt(api, "user4", **{"X-Forwarded-For": "198.51.100.99"})
            assert r.status_code == 429
            assert r.headers["ratelimit-policy"] == '"login-name";q=3;w=60'
