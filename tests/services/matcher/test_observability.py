"""The matcher's health and metrics routes (shared/infra/health.py), and its own metric group."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from tests.services.matcher.conftest import make_user, open_socket, recv_type, scrape, send


async def test_metrics_count_sockets_matches_latency_and_deliveries(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    http = matcher_url.replace("ws://", "http://")
    ada = await make_user(api, db, "ada", ["chess", "go"])
    bob = await make_user(api, db, "bob", ["go"])
    async with httpx.AsyncClient() as client:
        assert await scrape(client, http, "redline_matcher_matches_total") == 0
        async with open_socket(matcher_url, ada) as a, open_socket(matcher_url, bob) as b:
            await recv_type(a, "queued")
            await recv_type(b, "queued")
            assert await scrape(client, http, "redline_matcher_open_sockets") == 2
            await send(b, type="find_match")
            await recv_type(b, "match_found")
            await recv_type(a, "match_found")
            assert await scrape(client, http, "redline_matcher_matches_total") == 1
            # One find_match, timed once; the partner's result came through pub/sub.
            count = "redline_matcher_find_match_duration_seconds_count"
            assert await scrape(client, http, count) == 1
            assert await scrape(client, http, "redline_matcher_deliveries_total") == 1
            assert await scrape(client, http, "redline_matcher_delivery_drops_total") == 0
        for _ in range(50):
            if await scrape(client, http, "redline_matcher_open_sockets") == 0:
                break
            await asyncio.sleep(0.05)
        assert await scrape(client, http, "redline_matcher_open_sockets") == 0
        # The HTTP routes are observed too (the shared RequestObserver).
        text = (await client.get(f"{http}/metrics")).text
        assert 'redline_http_requests_total{method="GET",route="/metrics",status="200"}' in text


async def test_health_routes_are_the_shared_ones(matcher_url: str) -> None:
    http = matcher_url.replace("ws://", "http://")
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{http}/healthz")).json() == {"status": "ok"}
        ready = (await client.get(f"{http}/readyz")).json()
    assert ready == {"status": "ready", "checks": {"state_redis": "up", "postgres": "up"}}
