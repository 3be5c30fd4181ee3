"""The request observer on a bare app (no Redis needed), and job tracing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.asyncio.client import connect

from deploy.embedded import free_port
from shared.domain.jobs import traced
from shared.infra.logs import request_id
from shared.infra.metrics import HttpMetrics, JobMetrics, new_registry, render
from shared.infra.observer import RequestObserver
from tests.support.metrics import sample


async def test_a_websocket_session_runs_under_one_request_id() -> None:
    app = FastAPI()
    registry = new_registry()
    app.add_middleware(RequestObserver, metrics=HttpMetrics(registry))

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text(request_id.get() or "none")
        await socket.receive_text()
        await socket.send_text(request_id.get() or "none")
        await socket.close()

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 - uvicorn has only the flag
            await asyncio.sleep(0.01)
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url, additional_headers={"X-Request-ID": "sock-1"}) as socket:
            assert await socket.recv() == "sock-1"
            await socket.send("hi")
            assert await socket.recv() == "sock-1", "the same id for the whole session"
        async with connect(url) as socket:
            generated = await socket.recv()
            await socket.send("hi")
            assert await socket.recv() == generated
        assert len(str(generated)) == 32
    finally:
        server.should_exit = True
        await serving
    # Sockets are not HTTP requests: no request series for them.
    assert "/ws" not in render(registry).decode()


def test_unknown_methods_do_not_grow_the_series_cache() -> None:
    http = HttpMetrics(new_registry())
    for i in range(100):
        http.observe(f"M{i}", "unmatched", 405, 0.0001)
    http.observe("GET", "unmatched", 404, 0.0001)
    assert len(http._children) == 2


async def test_a_traced_job_runs_under_its_request_id_and_counts_failures() -> None:
    registry = new_registry()
    jobs = JobMetrics(registry)
    seen: list[str | None] = []

    @traced("probe")
    async def probe(ctx: dict[str, Any], fail: bool) -> str:
        seen.append(request_id.get())
        if fail:
            raise ValueError("no")
        await asyncio.sleep(10 if ctx.get("slow") else 0)
        return "done"

    ctx: dict[str, Any] = {"job_metrics": jobs}
    assert await probe(ctx, False, request_id="req-9") == "done"
    assert await probe({**ctx, "job_id": "cron:probe:1"}, False) == "done"
    with pytest.raises(ValueError):
        await probe(ctx, True, request_id="req-10")
    slow = asyncio.create_task(probe({**ctx, "slow": True}, False, request_id="req-11"))
    await asyncio.sleep(0.05)
    slow.cancel()  # what arq's job timeout does
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert seen == ["req-9", "cron:probe:1", "req-10", "req-11"]
    assert request_id.get() is None, "reset after each job"
    text = render(registry).decode()
    assert sample(text, "redline_job_runs_total", job="probe") == 4
    assert sample(text, "redline_job_failures_total", job="probe") == 2
