"""The flusher's metrics, its health port, and the request id that travels from the API into the
flush job. Job functions and startup/shutdown are called directly, as in test_worker.py."""

from __future__ import annotations

import logging
import math
import signal
import socket
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from arq.connections import ArqRedis

from deploy.embedded import free_port
from services.flusher import worker
from shared.infra.logs import RequestIdFilter
from shared.infra.metrics import render
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.support.metrics import closed_port_url, sample
from tests.support.processes import http_ready, running, settings_env
from tests.support.users import create_doc, edit, signup
from tests.support.worker import worker_context


def exposition(ctx: dict[str, Any]) -> str:
    return render(ctx["registry"]).decode()


async def test_cron_flush_is_counted(api: httpx.AsyncClient, ctx: dict[str, Any]) -> None:
    alice = await signup(api, "alice")
    for i in range(5):
        doc = await create_doc(api, alice, title=f"d{i}")
        await edit(api, alice, doc["id"], "typed")
    assert (await worker.flush_dirty(ctx))["written"] == 5
    await worker.flush_dirty(ctx)  # nothing left: a pass, no batch
    text = exposition(ctx)
    assert sample(text, "redline_flush_rows_total", kind="cron") == 5
    assert sample(text, "redline_flush_batches_total", kind="cron") == 1
    assert sample(text, "redline_flush_duration_seconds_count", kind="cron") == 2
    assert sample(text, "redline_job_runs_total", job="flush_dirty") == 2
    assert sample(text, "redline_job_failures_total", job="flush_dirty") is None


async def test_document_flush_and_job_failure_are_counted(
    api: httpx.AsyncClient, ctx: dict[str, Any]
) -> None:
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    await edit(api, alice, doc["id"], "one")
    assert (await worker.flush_document(ctx, doc["id"]))["written"] == 1
    await edit(api, alice, doc["id"], "two")
    # A real failure: the worker's Postgres pool is gone, the write raises, arq would retry.
    await ctx["db"].close()
    with pytest.raises(Exception, match="pool is closed"):
        await worker.flush_document(ctx, doc["id"])
    text = exposition(ctx)
    assert sample(text, "redline_flush_rows_total", kind="document") == 1
    assert sample(text, "redline_flush_failures_total", kind="document", outcome="gave_up") == 1
    assert sample(text, "redline_job_runs_total", job="flush_document") == 2
    assert sample(text, "redline_job_failures_total", job="flush_document") == 1


async def test_request_id_travels_from_the_api_into_the_flush_job(
    api: httpx.AsyncClient,
    settings: Settings,
    queue: ArqRedis,
    ctx: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    alice = await signup(api, "alice")
    doc = await create_doc(api, alice)
    url = f"/v1/documents/{doc['id']}/presence"
    await api.post(url, headers=alice.auth)
    await edit(api, alice, doc["id"], "last words")
    r = await api.delete(url, headers={**alice.auth, "X-Request-ID": "leave-7f3a"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "leave-7f3a"
    job = (await queue.queued_jobs(queue_name=keys.queue_name))[0]
    assert job.kwargs == {"request_id": "leave-7f3a"}
    # configure_logging installs this filter on the real handler; caplog's handler needs it too.
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="redline.flusher"):
        await worker.flush_document(ctx, *job.args, **job.kwargs)
        logging.getLogger("redline.flusher").info("after the job")
    flushed = [r for r in caplog.records if r.getMessage().startswith("flushed document")]
    assert len(flushed) == 1
    assert flushed[0].__dict__["request_id"] == "leave-7f3a"
    after = next(r for r in caplog.records if r.getMessage() == "after the job")
    assert "request_id" not in after.__dict__, "the id is reset when the job ends"


async def test_metrics_port_serves_health_and_metrics(
    migrated: Servers, api: httpx.AsyncClient
) -> None:
    port = free_port()
    settings = make_settings(migrated, flusher_metrics_port=port)
    alice = await signup(api, "alice")
    for i in range(3):
        doc = await create_doc(api, alice, title=f"d{i}")
        await edit(api, alice, doc["id"], "unsaved")
    ctx: dict[str, Any] = {"settings": settings}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    await worker.startup(ctx)
    try:
        # The server is a guest on arq's loop: the process's signals stay arq's (here, pytest's).
        assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert (await http.get("/healthz")).json() == {"status": "ok"}
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"] == {
                "state_redis": "up",
                "queue_redis": "up",
                "postgres": "up",
            }
            text = (await http.get("/metrics")).text
            assert sample(text, "redline_dirty_documents") == 3
            age = sample(text, "redline_oldest_dirty_age_seconds")
            assert age is not None and 0 < age < 60
            await worker.flush_dirty(ctx)
            text = (await http.get("/metrics")).text
            assert sample(text, "redline_dirty_documents") == 0
            assert sample(text, "redline_oldest_dirty_age_seconds") == 0
            assert sample(text, "redline_flush_rows_total", kind="cron") == 3
    finally:
        await worker.shutdown(ctx)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "shutdown stops the metrics server"


async def test_flusher_readyz_is_503_when_postgres_is_unreachable(migrated: Servers) -> None:
    port = free_port()
    settings = make_settings(
        migrated,
        flusher_metrics_port=port,
        database_url=closed_port_url(migrated.database_url),
        readiness_timeout_s=0.5,
    )
    async with (
        worker_context(settings),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http,
    ):
        r = await http.get("/readyz")
        assert (await http.get("/healthz")).status_code == 200
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["checks"]["postgres"] == "down"
    assert r.json()["checks"]["state_redis"] == "up"


async def test_a_taken_metrics_port_does_not_stop_the_flusher(
    migrated: Servers, api: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(migrated, flusher_metrics_port=port)
        ctx: dict[str, Any] = {"settings": settings}
        with caplog.at_level(logging.ERROR, logger="redline.flusher"):
            await worker.startup(ctx)
        try:
            assert "probe_server" not in ctx
            assert any("metrics port" in r.getMessage() for r in caplog.records)
            alice = await signup(api, "alice")
            doc = await create_doc(api, alice)
            await edit(api, alice, doc["id"], "still saved")
            assert (await worker.flush_dirty(ctx))["written"] == 1
        finally:
            await worker.shutdown(ctx)


async def test_flusher_process_serves_its_port_and_still_drains_on_sigterm(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """The port is served on arq's event loop without taking arq's signals: SIGTERM still
    drains every dirty document before the process exits."""
    port = free_port()
    # A long interval: only the drain on exit can save these edits within the test.
    settings = make_settings(migrated, flusher_metrics_port=port, flush_interval=3600)
    alice = await signup(api, "alice")
    docs = [(await create_doc(api, alice, title=f"d{i}"))["id"] for i in range(4)]
    for doc_id in docs:
        await edit(api, alice, doc_id, "unsaved at exit")
    base = f"http://127.0.0.1:{port}"
    env = settings_env(settings)
    async with running(
        "flusher", "services.flusher", env, tmp_path, http_ready(base + "/readyz")
    ) as flusher:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            text = (await http.get("/metrics")).text
        assert sample(text, "redline_dirty_documents") == 4
        flusher.send(signal.SIGTERM)
        assert await flusher.wait(30) == 0, flusher.tail()
    assert await db.fetchval("SELECT count(*) FROM documents WHERE version = 1") == 4
    log = flusher.log()
    assert "drained: 4 written" in log, flusher.tail()
    assert '"logger": "redline.health"' in log, "JSON log lines from the probe server"
    # The port stayed up through the drain and closed after it.
    assert log.index("drained: 4 written") < log.index("Finished server process"), flusher.tail()


async def test_flusher_with_its_redis_unreachable_reports_unknown_backlog_and_503(
    migrated: Servers,
) -> None:
    port = free_port()
    settings = make_settings(
        migrated,
        flusher_metrics_port=port,
        state_redis_url=closed_port_url(migrated.redis_url),
        readiness_timeout_s=0.5,
        shutdown_drain_s=0.5,  # the drain on exit retries the dead Redis until this passes
    )
    ctx: dict[str, Any] = {"settings": settings}
    await worker.startup(ctx)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            ready = await http.get("/readyz")
            scrape = await http.get("/metrics")
    finally:
        await worker.shutdown(ctx)  # its drain fails on the dead Redis, and says so
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"state_redis": "down", "queue_redis": "up", "postgres": "up"}
    assert scrape.status_code == 200, "a scrape never fails because a gauge could not be read"
    dirty = sample(scrape.text, "redline_dirty_documents")
    assert dirty is not None and math.isnan(dirty)
