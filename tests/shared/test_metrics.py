"""Metric groups, readiness aggregation and the shared health routes, against real Redis."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError

from shared.infra.cache import CacheStats
from shared.infra.clients import redis_client
from shared.infra.dependencies import DOWN, REDIS_DOWN, detail, reason, retry_after_s
from shared.infra.health import Check, Observability, health_router, redis_check
from shared.infra.logs import JsonFormatter, RequestIdFilter, accept_request_id, request_id
from shared.infra.metrics import (
    CacheCounters,
    DependencyMetrics,
    FlushMetrics,
    HttpMetrics,
    JobMetrics,
    new_registry,
    render,
)
from shared.settings import Settings
from tests.support.metrics import closed_port_url, sample


def test_registries_are_independent() -> None:
    # The default global REGISTRY would raise "Duplicated timeseries" on the second group.
    one, two = new_registry(), new_registry()
    http_one, http_two = HttpMetrics(one), HttpMetrics(two)
    http_one.observe("GET", "/v1/x", 200, 0.001)
    assert sample(render(one).decode(), "redline_http_requests_total", **_get_x()) == 1
    assert sample(render(two).decode(), "redline_http_requests_total", **_get_x()) is None
    http_two.observe("GET", "/v1/x", 200, 0.001)
    assert sample(render(two).decode(), "redline_http_requests_total", **_get_x()) == 1


def _get_x() -> dict[str, str]:
    return {"method": "GET", "route": "/v1/x", "status": "200"}


def test_http_latency_buckets_resolve_sub_millisecond_requests() -> None:
    registry = new_registry()
    http = HttpMetrics(registry)
    for seconds in (0.0003, 0.0004, 0.002):
        http.observe("PUT", "/v1/documents/{doc_id}/content", 202, seconds)
    out = render(registry).decode()
    labels = {"method": "PUT", "route": "/v1/documents/{doc_id}/content", "status": "202"}
    bucket = "redline_http_request_duration_seconds_bucket"
    assert sample(out, bucket, **labels, le="0.0005") == 2
    assert sample(out, bucket, **labels, le="0.0025") == 3


def test_unknown_methods_fold_into_one_label() -> None:
    registry = new_registry()
    http = HttpMetrics(registry)
    for method in ("BREW", "PROPFIND", "X" * 50):
        http.observe(method, "unmatched", 405, 0.0001)
    out = render(registry).decode()
    labels = {"method": "OTHER", "route": "unmatched", "status": "405"}
    assert sample(out, "redline_http_requests_total", **labels) == 3
    assert "BREW" not in out


def test_cache_counters_export_the_caches_own_numbers() -> None:
    registry = new_registry()
    stats = CacheStats()
    registry.register(CacheCounters(stats.numbers))
    profile = stats.of("profile")
    profile.hits += 3
    profile.misses += 1
    profile.fallbacks += 1
    stats.of("trending").misses += 1
    out = render(registry).decode()
    assert sample(out, "redline_cache_hits_total", family="profile") == 3
    assert sample(out, "redline_cache_misses_total", family="profile") == 1
    assert sample(out, "redline_cache_fallbacks_total", family="profile") == 1
    assert sample(out, "redline_cache_misses_total", family="trending") == 1
    # Read at scrape time: a later lookup shows in the next scrape.
    profile.hits += 1
    assert sample(render(registry).decode(), "redline_cache_hits_total", family="profile") == 4


def test_flush_metrics() -> None:
    registry = new_registry()
    flush = FlushMetrics(registry)
    flush.flushed("cron", batches=2, rows=1500, retries=1, seconds=0.4)
    flush.gave_up("cron", 5.0)
    flush.backlog(12, 3.5)
    out = render(registry).decode()
    assert sample(out, "redline_flush_batches_total", kind="cron") == 2
    assert sample(out, "redline_flush_rows_total", kind="cron") == 1500
    assert sample(out, "redline_flush_failures_total", kind="cron", outcome="retried") == 1
    assert sample(out, "redline_flush_failures_total", kind="cron", outcome="gave_up") == 1
    assert sample(out, "redline_flush_duration_seconds_count", kind="cron") == 2
    assert sample(out, "redline_dirty_documents") == 12
    assert sample(out, "redline_oldest_dirty_age_seconds") == 3.5
    flush.backlog(None, None)  # Redis did not answer: unknown, not zero
    out = render(registry).decode()
    assert math.isnan(sample(out, "redline_dirty_documents") or 0.0)


def test_flush_metrics_count_the_quarantine() -> None:
    registry = new_registry()
    flush = FlushMetrics(registry)
    flush.flushed("drain", batches=1, rows=9, retries=0, seconds=0.1, quarantined=2)
    flush.quarantine(3)
    out = render(registry).decode()
    assert sample(out, "redline_flush_quarantined_documents_total", kind="drain") == 2
    assert sample(out, "redline_quarantined_documents") == 3
    flush.quarantine(None)
    out = render(registry).decode()
    assert math.isnan(sample(out, "redline_quarantined_documents") or 0.0)


def test_job_metrics() -> None:
    registry = new_registry()
    jobs = JobMetrics(registry)
    jobs.ran("flush_document")
    jobs.ran("flush_document")
    jobs.failed("flush_document")
    out = render(registry).decode()
    assert sample(out, "redline_job_runs_total", job="flush_document") == 2
    assert sample(out, "redline_job_failures_total", job="flush_document") == 1


@pytest.fixture
async def hung_port() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: a hung dependency."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_readiness_runs_checks_bounded_and_names_what_is_down(
    settings: Settings, redis: Redis, hung_port: int
) -> None:
    down = redis_client(closed_port_url(settings.state_url))
    hung = redis_client(f"redis://127.0.0.1:{hung_port}/0")
    obs = Observability(new_registry(), timeout_s=0.3)
    obs.watch(redis_check("up", redis), redis_check("refused", down), redis_check("hung", hung))
    started = time.monotonic()
    ready, checks = await obs.readiness()
    took = time.monotonic() - started
    await down.aclose()
    await hung.aclose()
    assert not ready
    assert checks == {"up": "up", "refused": "down", "hung": "down"}
    # Bounded by the timeout: a hung check does not hang readiness (3 s is 10 timeouts, so a
    # loaded machine does not fail it; running them one after another would still pass it).
    assert took < 3.0, f"each check is bounded by the timeout ({took:.2f}s)"


async def test_a_non_critical_check_reports_without_making_the_service_unready(
    settings: Settings, redis: Redis
) -> None:
    cache = redis_client(closed_port_url(settings.state_url))
    obs = Observability(new_registry(), timeout_s=0.5)
    obs.watch(redis_check("state_redis", redis), redis_check("cache_redis", cache, critical=False))
    app = FastAPI()
    app.include_router(health_router(obs))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/readyz")
    await cache.aclose()
    assert r.status_code == 200
    assert r.json() == {
        "status": "degraded",
        "checks": {"state_redis": "up", "cache_redis": "down"},
    }


async def test_scrape_refreshers_run_and_a_failing_one_does_not_break_the_scrape(
    redis: Redis,
) -> None:
    obs = Observability(new_registry(), timeout_s=0.5)
    flush = FlushMetrics(obs.registry)

    async def backlog() -> None:
        await redis.set("rlt:probe", "7")
        flush.backlog(int(await redis.get("rlt:probe") or 0), 1.0)

    async def broken() -> None:
        raise ConnectionError("redis went away")

    obs.on_scrape(broken)
    obs.on_scrape(backlog)
    app = FastAPI()
    app.include_router(health_router(obs))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/metrics")
    assert r.status_code == 200
    assert sample(r.text, "redline_dirty_documents") == 7


async def test_a_check_that_answers_false_is_down() -> None:
    async def no() -> object:
        return False

    obs = Observability(new_registry())
    obs.watch(Check("flag", no))
    assert await obs.readiness() == (False, {"flag": "down"})


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (b"abc-123", True),
        (b"a.b:c_d-e", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"has space", False),
        (b"new\r\nline", False),
        ("é".encode(), False),
        (None, False),
    ],
)
def test_accept_request_id(raw: bytes | None, kept: bool) -> None:
    got = accept_request_id(raw)
    if kept:
        assert raw is not None and got == raw.decode()
    else:
        assert len(got) == 32 and int(got, 16) >= 0


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("redline.api", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    token = request_id.set("rid-1")
    try:
        RequestIdFilter().filter(record)
    finally:
        request_id.reset(token)
    line = JsonFormatter().format(record)
    assert '"request_id": "rid-1"' in line and '"msg": "hello x"' in line
    outside = logging.LogRecord("redline.api", logging.INFO, __file__, 1, "bye", (), None)
    RequestIdFilter().filter(outside)
    assert "request_id" not in JsonFormatter().format(outside)


def test_dependency_metrics_count_by_dependency_and_reason() -> None:
    registry = new_registry()
    deps = DependencyMetrics(registry)
    full = OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    deps.failed(full)
    deps.failed(full)
    deps.failed(RedisConnectionError("Connection refused"))
    deps.failed(asyncpg.exceptions.CannotConnectNowError("the database system is starting up"))
    out = render(registry).decode()
    name = "redline_dependency_unavailable_total"
    assert sample(out, name, dependency="redis", reason="full") == 2
    assert sample(out, name, dependency="redis", reason="down") == 1
    assert sample(out, name, dependency="postgres", reason="down") == 1
    # A full Redis is still "down" for every handler of DOWN, with its own answer.
    assert isinstance(full, DOWN) and isinstance(full, REDIS_DOWN)
    assert (reason(full), retry_after_s(full)) == ("full", 5)
    assert detail(full).startswith("redis is full (maxmemory reached)")
    assert detail(RedisConnectionError()) == "redis is unavailable; retry shortly"
