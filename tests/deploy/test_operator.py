"""Operator surfaces (shared/infra/health.py `OperatorGate`): /metrics on the api, the matcher and a
worker's probe port, and /v1/stats/cache, need the operator token when one is set; in
production without one /metrics is 403 naming the setting; /healthz and /readyz stay open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.flusher.probes import ProbeServer
from shared.infra.health import Observability, OperatorGate, probe_app
from shared.infra.metrics import new_registry
from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.services.matcher.conftest import matcher_server
from tests.support.apps import api_app
from tests.support.users import signup

TOKEN = "operator-token-for-tests-0123456789"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}


def with_token(migrated: Servers, **overrides: object) -> Settings:
    return make_settings(migrated, operator_token=TOKEN, **overrides)


async def assert_gated(client: httpx.AsyncClient, path: str = "/metrics") -> httpx.Response:
    """401 without the token or with a wrong one (even a near miss); 200 with it."""
    for headers in ({}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}, {"Authorization": TOKEN}):
        r = await client.get(path, headers=headers)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    r = await client.get(path, headers=OPERATOR)
    assert r.status_code == 200, r.text
    return r


async def test_api_metrics_need_the_operator_token(migrated: Servers) -> None:
    async with api_app(with_token(migrated)) as (_, api):
        scraped = await assert_gated(api)
        assert "redline_http_requests_total" in scraped.text
        assert (await api.get("/metrics")).headers["www-authenticate"].startswith("Bearer")
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).status_code == 200


async def test_stats_are_for_the_operator_only_when_a_token_is_set(migrated: Servers) -> None:
    async with api_app(with_token(migrated)) as (_, api):
        alice = await signup(api, "alice")
        r = await api.get("/v1/stats/cache", headers=alice.auth)
        assert r.status_code == 401  # a session is not an operator
        r = await api.get("/v1/stats/cache", headers=OPERATOR)
        assert r.status_code == 200
        assert "queue_depth" in r.json() and "cache_redis" in r.json()


async def test_stats_without_a_token_stay_for_signed_in_users_outside_production(
    migrated: Servers,
) -> None:
    async with api_app(make_settings(migrated)) as (_, api):
        assert (await api.get("/v1/stats/cache")).status_code == 401
        alice = await signup(api, "alice")
        assert (await api.get("/v1/stats/cache", headers=alice.auth)).status_code == 200
        assert (await api.get("/metrics")).status_code == 200


async def test_production_without_a_token_closes_metrics_but_not_health() -> None:
    # The gate as a production service without REDLINE_OPERATOR_TOKEN builds it (the api
    # itself refuses to start in production against the test servers' all-powerful Redis user).
    settings = Settings(env="production")
    gate = OperatorGate.of(settings)
    assert gate.denial(None) is not None and gate.denial(f"Bearer {TOKEN}") is not None
    obs = Observability(new_registry(), operator=gate)
    app: FastAPI = probe_app(obs)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/metrics", headers=OPERATOR)
        assert r.status_code == 403
        assert "REDLINE_OPERATOR_TOKEN" in r.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


async def test_matcher_metrics_need_the_operator_token(migrated: Servers) -> None:
    async with (
        matcher_server(with_token(migrated)) as url,
        httpx.AsyncClient(base_url=url.replace("ws://", "http://")) as client,
    ):
        scraped = await assert_gated(client)
        assert "redline_matcher_open_sockets" in scraped.text
        assert (await client.get("/healthz")).status_code == 200


@asynccontextmanager
async def probe(settings: Settings) -> AsyncIterator[int]:
    server = ProbeServer(Observability.of(new_registry(), settings), "127.0.0.1", 0)
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop()


async def test_probe_port_metrics_need_the_operator_token(migrated: Servers) -> None:
    async with (
        probe(with_token(migrated)) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
    ):
        await assert_gated(client)
        assert (await client.get("/healthz")).status_code == 200


async def test_probe_port_has_the_same_edge(migrated: Servers) -> None:
    async with probe(with_token(migrated, http_header_timeout_s=0.5)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            async with asyncio.timeout(5):
                answer = await reader.read()
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
