"""Liveness, readiness, /metrics, request ids and the access log of the API, on real servers."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import httpx
import pytest

from deploy.embedded import Valkey, free_port
from services.api.app import create_app
from shared.settings import Settings
from tests.conftest import Servers, make_settings
from tests.support.apps import api_app
from tests.support.metrics import closed_port_url, sample
from tests.support.users import create_doc, signup


async def test_healthz_is_liveness_only(api: httpx.AsyncClient) -> None:
    r = await api.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz_reports_every_dependency_up(api: httpx.AsyncClient) -> None:
    r = await api.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {
            "state_redis": "up",
            "queue_redis": "up",
            "postgres": "up",
            "cache_redis": "up",
        },
    }


async def test_readyz_is_503_naming_postgres_when_it_is_unreachable(migrated: Servers) -> None:
    settings = make_settings(
        migrated, database_url=closed_port_url(migrated.database_url), readiness_timeout_s=0.5
    )
    async with api_app(settings) as (_, api):
        started = time.monotonic()
        r = await api.get("/readyz")
        assert time.monotonic() - started < 2, "a down dependency must not hang readiness"
        assert (await api.get("/healthz")).status_code == 200, "liveness ignores dependencies"
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["checks"] == {
        "state_redis": "up",
        "queue_redis": "up",
        "postgres": "down",
        "cache_redis": "up",
    }
    assert body["status"] == 503 and "postgres" in body["detail"]
    assert "redis" not in body["detail"]


async def test_readyz_is_503_naming_each_redis_that_is_unreachable(
    migrated: Servers, tmp_path: Path
) -> None:
    # The queue Redis is a dedicated server we stop mid-test; the state Redis is a closed port
    # (the lifespan does not need it to start). The session's servers are never touched.
    queue = Valkey(tmp_path / "queue", free_port(), aof=False)
    queue.start()
    try:
        settings = make_settings(
            migrated,
            state_redis_url=closed_port_url(migrated.redis_url),
            queue_redis_url=queue.url,
            readiness_timeout_s=0.5,
        )
        async with api_app(settings) as (_, api):
            r = await api.get("/readyz")
            assert r.status_code == 503
            assert r.json()["checks"] == {
                "state_redis": "down",
                "queue_redis": "up",
                "postgres": "up",
                "cache_redis": "up",
            }
            assert "state_redis" in r.json()["detail"]
            queue.stop()
            started = time.monotonic()
            r = await api.get("/readyz")
            assert time.monotonic() - started < 2
            assert r.status_code == 503
            assert r.json()["checks"]["queue_redis"] == "down"
            assert r.json()["checks"]["postgres"] == "up"
    finally:
        queue.stop()


async def test_metrics_count_requests_per_route_template(api: httpx.AsyncClient) -> None:
    alice = await signup(api, "alice")
    docs = [await create_doc(api, alice, title=f"d{i}") for i in range(3)]
    for doc in docs:
        assert (await api.get(f"/v1/documents/{doc['id']}", headers=alice.auth)).status_code == 200
    missing = "00000000-0000-0000-0000-000000000000"
    assert (await api.get(f"/v1/documents/{missing}", headers=alice.auth)).status_code == 404
    assert (await api.get("/no/such/route")).status_code == 404
    r = await api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = "/v1/documents/{doc_id}"
    ok = {"method": "GET", "route": route, "status": "200"}
    assert sample(text, "redline_http_requests_total", **ok) == 3
    assert sample(text, "redline_http_requests_total", **{**ok, "status": "404"}) == 1
    assert sample(text, "redline_http_request_duration_seconds_count", **ok) == 3
    assert (
        sample(
            text, "redline_http_requests_total", method="POST", route="/v1/documents", status="201"
        )
        == 3
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert sample(text, "redline_http_requests_total", **unmatched) == 1
    # One series per template: no raw path, no document id, ever becomes a label.
    for doc in docs:
        assert doc["id"] not in text
    assert "/no/such/route" not in text
    # The process collectors come with every registry.
    assert "process_cpu_seconds_total" in text


async def test_each_app_has_its_own_registry(migrated: Servers) -> None:
    settings = make_settings(migrated)
    async with api_app(settings) as (_, one), api_app(settings) as (_, two):
        for _ in range(2):
            await one.get("/healthz")
        own = (await one.get("/metrics")).text
        other = (await two.get("/metrics")).text
    labels = {"method": "GET", "route": "/healthz", "status": "200"}
    assert sample(own, "redline_http_requests_total", **labels) == 2
    assert sample(other, "redline_http_requests_total", **labels) is None


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [
        ("trace-0a1b.2c:3d_4", "trace-0a1b.2c:3d_4"),
        ("x" * 129, None),  # too long
        ("bad id with spaces", None),
        ("<script>", None),
        ("", None),
    ],
)
async def test_request_id_is_echoed_only_when_well_formed(
    api: httpx.AsyncClient, sent: str, echoed: str | None
) -> None:
    r = await api.get("/healthz", headers={"X-Request-ID": sent})
    got = r.headers["x-request-id"]
    if echoed is not None:
        assert got == echoed
    else:
        assert got != sent and re.fullmatch(r"[0-9a-f]{32}", got)


async def test_a_request_id_is_generated_per_request(api: httpx.AsyncClient) -> None:
    ids = {(await api.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


async def test_error_answers_carry_the_request_id_and_are_counted(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/auth/me", headers={"X-Request-ID": "req-401"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "req-401"
    text = (await api.get("/metrics")).text
    labels = {"method": "GET", "route": "/v1/auth/me", "status": "401"}
    assert sample(text, "redline_http_requests_total", **labels) == 1


async def test_access_log_line_per_request(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    with caplog.at_level(logging.INFO, logger="redline.access"):
        r = await api.get(
            f"/v1/documents/{doc['id']}", headers={**alice.auth, "X-Request-ID": "read-1"}
        )
    assert r.status_code == 200
    lines = [rec for rec in caplog.records if rec.name == "redline.access"]
    assert len(lines) == 1
    line = lines[0]
    assert line.levelno == logging.INFO
    assert line.__dict__["method"] == "GET"
    assert line.__dict__["route"] == "/v1/documents/{doc_id}"
    assert line.__dict__["path"] == f"/v1/documents/{doc['id']}"
    assert line.__dict__["status"] == 200
    assert line.__dict__["request_id"] == "read-1"
    assert 0 < line.__dict__["duration_ms"] < 5000


async def test_access_log_is_skipped_when_info_is_off(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="redline.access"):
        await api.get("/healthz")
    assert not [rec for rec in caplog.records if rec.name == "redline.access"]


async def test_an_unexpected_error_is_500_with_the_request_id_in_header_and_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)  # a route with a bug, added to the real app
    async with app.router.lifespan_context(app):
        # Starlette re-raises after answering, so servers can log it; httpx would re-raise it too.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            with caplog.at_level(logging.ERROR, logger="redline.api"):
                r = await api.get("/boom", headers={"X-Request-ID": "bug-42"})
            text = (await api.get("/metrics")).text
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["x-request-id"] == "bug-42"
    logged = [rec for rec in caplog.records if rec.getMessage().startswith("unhandled error")]
    assert len(logged) == 1 and logged[0].__dict__["request_id"] == "bug-42"
    assert logged[0].exc_info is not None
    labels = {"method": "GET", "route": "/boom", "status": "500"}
    assert sample(text, "redline_http_requests_total", **labels) == 1


async def test_successful_autosaves_are_counted_but_not_access_logged(
    api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, migrated: Servers
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/content"
    with caplog.at_level(logging.INFO, logger="redline.access"):
        assert (await api.put(url, json={"content": "a"}, headers=alice.auth)).status_code == 202
        stale = await api.put(url, json={"content": "b", "base_version": 0}, headers=alice.auth)
        assert stale.status_code == 409
    logged = [rec.__dict__["status"] for rec in caplog.records if rec.name == "redline.access"]
    assert logged == [409]  # the failed edit only
    text = (await api.get("/metrics")).text
    labels = {"method": "PUT", "route": "/v1/documents/{doc_id}/content", "status": "202"}
    assert sample(text, "redline_http_requests_total", **labels) == 1
    # REDLINE_ACCESS_LOG_EDITS=true logs them all.
    caplog.clear()
    async with api_app(make_settings(migrated, access_log_edits=True)) as (_, verbose):
        bob = await signup(verbose, "bob")
        other = await create_doc(verbose, bob)
        with caplog.at_level(logging.INFO, logger="redline.access"):
            r = await verbose.put(
                f"/v1/documents/{other['id']}/content", json={"content": "x"}, headers=bob.auth
            )
            assert r.status_code == 202
    assert [rec.__dict__["status"] for rec in caplog.records if rec.name == "redline.access"] == [
        202
    ]
