"""What the request observer (shared/infra/observer.py: request id, metrics, access log) costs
a request.

`python -m bench.observer [--requests N] [--rounds R]` builds the API twice, with and without the
middleware, and times the same requests through each, alternating rounds and keeping each
variant's best round (the machine is shared; the minimum is the least disturbed):

1. /healthz called as a bare ASGI app (no HTTP client): the middleware's own cost, undiluted.
2. the autosave edit (PUT /v1/documents/{id}/content) through httpx's ASGI transport against an
   embedded Valkey and PostgreSQL: the cost on the real hot path.

The access log is measured off (logger at WARNING) and on (JSON lines to /dev/null).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from deploy.embedded import Postgres, Valkey, free_port
from services.api.app import create_app
from shared.infra.logs import configure_logging
from shared.infra.observer import RequestObserver
from shared.settings import Settings
from shared.store.migrations import migrate_url

Variant = Callable[[int], Awaitable[float]]


def _without_observer(app: FastAPI) -> FastAPI:
    # The middleware stack is built on the first call, so it can still be left out here.
    app.user_middleware = [m for m in app.user_middleware if m.cls != RequestObserver]  # type: ignore[comparison-overlap]
    return app


async def _asgi_loop(
    app: FastAPI,
    n: int,
    method: str = "GET",
    path: str = "/healthz",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> float:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"api"), (b"x-request-id", b"bench-1"), *(headers or [])],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    took = (time.perf_counter() - started) / n
    assert statuses <= {200, 202}, statuses
    return took


async def _best(variants: dict[str, Variant], n: int, rounds: int) -> dict[str, float]:
    best = dict.fromkeys(variants, float("inf"))
    order = list(variants)
    for i in range(rounds):
        # Rotate who goes first, so a drift during a round (GC, a neighbour) hits each in turn.
        for name in order[i % len(order) :] + order[: i % len(order)]:
            best[name] = min(best[name], await variants[name](n))
    return best


def _report(title: str, best: dict[str, float]) -> None:
    base = best["without"]
    print(f"\n{title}")
    for name, seconds in best.items():
        extra = "" if name == "without" else f"  (+{(seconds - base) * 1e6:.1f} us)"
        print(f"  {name:<26} {seconds * 1e6:8.1f} us/request{extra}")


def _access_log(on: bool) -> None:
    logging.getLogger("redline.access").setLevel(logging.INFO if on else logging.WARNING)


def _with_log(on: bool, run: Variant) -> Variant:
    async def wrapped(n: int) -> float:
        _access_log(on)
        return await run(n)

    return wrapped


async def bare(settings: Settings, n: int, rounds: int) -> None:
    plain, observed = _without_observer(create_app(settings)), create_app(settings)
    variants: dict[str, Variant] = {
        "without": _with_log(False, lambda k: _asgi_loop(plain, k)),
        "with, access log off": _with_log(False, lambda k: _asgi_loop(observed, k)),
        "with, access log on": _with_log(True, lambda k: _asgi_loop(observed, k)),
    }
    _report(f"GET /healthz as bare ASGI, best of {rounds} x {n}", await _best(variants, n, rounds))


async def edits(settings: Settings, n: int, rounds: int) -> None:
    plain, observed = _without_observer(create_app(settings)), create_app(settings)
    async with plain.router.lifespan_context(plain), observed.router.lifespan_context(observed):
        clients = {
            name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
            for name, app in (("plain", plain), ("observed", observed))
        }
        r = await clients["plain"].post(
            "/v1/auth/signup", json={"username": "bench", "password": "bench password"}
        )
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        doc = await clients["plain"].post("/v1/documents", json={"title": "b"}, headers=auth)
        url = f"/v1/documents/{doc.json()['id']}/content"

        def loop(client: httpx.AsyncClient) -> Variant:
            async def run(k: int) -> float:
                started = time.perf_counter()
                for i in range(k):
                    r = await client.put(url, json={"content": f"text {i}"}, headers=auth)
                    assert r.status_code == 202, r.text
                return (time.perf_counter() - started) / k

            return run

        variants: dict[str, Variant] = {
            "without": _with_log(False, loop(clients["plain"])),
            "with, access log off": _with_log(False, loop(clients["observed"])),
            "with, access log on": _with_log(True, loop(clients["observed"])),
        }
        best = await _best(variants, n, rounds)
        for client in clients.values():
            await client.aclose()
        _report(f"PUT content (edit) via httpx ASGI, best of {rounds} x {n}", best)

        # The same edit as a bare ASGI call: no HTTP client in the measurement.
        body = b'{"content": "the same text every time"}'
        headers = [
            (b"authorization", auth["Authorization"].encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]

        def bare_edit(app: FastAPI) -> Variant:
            return lambda k: _asgi_loop(app, k, "PUT", url, headers, body)

        variants = {
            "without": _with_log(False, bare_edit(plain)),
            "with, access log off": _with_log(False, bare_edit(observed)),
            "with, access log on": _with_log(True, bare_edit(observed)),
        }
        best = await _best(variants, n, rounds)
        _report(f"PUT content (edit) as bare ASGI, best of {rounds} x {n}", best)


async def main(n: int, rounds: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="redline-bench-observer-"))
    valkey = Valkey(data / "valkey", free_port(), aof=False)
    postgres = Postgres(data / "postgres", free_port(), durable=False)
    try:
        valkey.start()
        postgres.start()
        await migrate_url(postgres.url)
        settings = Settings(
            redis_url=valkey.url,
            database_url=postgres.url,
            argon2_time_cost=1,
            argon2_memory_kib=64,
            argon2_parallelism=1,
        )
        await bare(settings, n * 5, rounds)
        await edits(settings, n, rounds)
    finally:
        postgres.stop(mode="immediate")
        valkey.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="edits per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    # The access log's JSON lines go where a real deployment's would, minus the terminal.
    configure_logging("INFO")
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    logging.getLogger().handlers[0].setStream(sys.stderr)  # type: ignore[attr-defined]
    asyncio.run(main(args.requests, args.rounds))
