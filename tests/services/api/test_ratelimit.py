"""Per-route GCRA policies over HTTP: N allowed, then 429 with Retry-After and the IETF
RateLimit headers; refills as GCRA says (time is mocked, never slept); keyed by user after
login and by peer address before it, where a forwarded address from an untrusted peer is ignored."""

from __future__ import annotations

import httpx

from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.support.apps import api_app, resources
from tests.support.users import signup


class Clock:
    def __init__(self) -> None:
        self.ms = 1_900_000_000_000

    def __call__(self) -> int:
        return self.ms


async def patch(api: httpx.AsyncClient, auth: dict[str, str], bio: str) -> httpx.Response:
    return await api.patch("/v1/users/me/profile", json={"bio": bio}, headers=auth)


async def test_profile_writes_limited_per_user_with_headers_and_gcra_refill(
    migrated: Servers,
) -> None:
    # 5 per 60 s: one token every 12 s, bursts of up to 5.
    settings = make_settings(migrated, profile_write_rate=5, profile_write_period_s=60)
    async with api_app(settings) as (app, api):
        clock = Clock()
        resources(app).limiter.clock = clock
        alice = await signup(api, "alice")
        bob = await signup(api, "bob")
        allowed = [await patch(api, alice.auth, f"{i}") for i in range(5)]
        assert [r.status_code for r in allowed] == [200] * 5
        # Success answers carry the fields too: what is left, and when the burst is all back.
        assert [r.headers["ratelimit"] for r in allowed] == [
            f'"profile-write";r={left};t={12 * (5 - left)}' for left in (4, 3, 2, 1, 0)
        ]
        assert allowed[0].headers["ratelimit-policy"] == '"profile-write";q=5;w=60'
        r = await patch(api, alice.auth, "6")
        assert r.status_code == 429
        assert r.headers["retry-after"] == "12"
        assert r.headers["ratelimit-policy"] == '"profile-write";q=5;w=60'
        assert r.headers["ratelimit"] == '"profile-write";r=0;t=12'
        assert r.headers["content-type"] == "application/problem+json"
        # Keyed by user: bob has his own budget.
        assert (await patch(api, bob.auth, "b")).status_code == 200
        # GCRA: 11.9 s later still nothing; at 12 s exactly one more request, not a new burst.
        clock.ms += 11_900
        r = await patch(api, alice.auth, "7")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        clock.ms += 100
        assert (await patch(api, alice.auth, "8")).status_code == 200
        assert (await patch(api, alice.auth, "9")).status_code == 429
        # After a full period the whole burst is back.
        clock.ms += 60_000
        assert [(await patch(api, alice.auth, f"{i}")).status_code for i in range(6)] == [
            *[200] * 5,
            429,
        ]


async def test_spoofed_forwarded_for_changes_nothing_before_login(settings: Settings) -> None:
    strict = settings.model_copy(update={"login_rate": 3, "login_period_s": 60})
    async with api_app(strict, client=("198.51.100.4", 5555)) as (app, api):
        resources(app).limiter.clock = Clock()
        codes = []
        for i in range(5):
            body = {"username": f"nobody{i}", "password": "wrong password"}
            spoof = {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"203.0.113.{i}"}
            codes.append((await api.post("/v1/auth/login", json=body, headers=spoof)).status_code)
        assert codes == [401, 401, 401, 429, 429]


async def test_forwarded_for_is_used_only_from_a_trusted_proxy(migrated: Servers) -> None:
    settings = make_settings(
        migrated, login_rate=2, login_period_s=60, trusted_proxies="198.51.100.0/24"
    )
    async with api_app(settings, client=("198.51.100.4", 5555)) as (app, api):
        resources(app).limiter.clock = Clock()

        async def attempt(client_ip: str) -> int:
            body = {"username": "nobody", "password": "wrong password"}
            headers = {"X-Forwarded-For": f"{client_ip}, 198.51.100.9"}
            return (await api.post("/v1/auth/login", json=body, headers=headers)).status_code

        assert [await attempt("203.0.113.1") for _ in range(3)][-1] == 429
        # A different real client behind the proxy has its own address budget; the per-name
        # budget (2 per minute for "nobody") is what stops it after its second try.
        assert await attempt("203.0.113.2") == 429
        body = {"username": "somebody", "password": "wrong password"}
        headers = {"X-Forwarded-For": "203.0.113.3"}
        assert (await api.post("/v1/auth/login", json=body, headers=headers)).status_code == 401
