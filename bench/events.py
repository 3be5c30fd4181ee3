"""The events scenario: how fast an edit or a finished job reaches a browser's /v1/ws/events.

1. Edit -> `document.edited`: one real matcher process, `sockets` authenticated sockets each
   subscribed to one of `docs` documents (so each document has sockets/docs followers), and an
   open-loop writer applying `rate` edits/s spread over the documents through the edit script
   (shared/store/lua/edit.lua via its wrapper: the api's one Redis call, without its HTTP hop). The
   latency of an event is from just before its edit call to its arrival on a follower's socket,
   for every follower.
2. `POST /v1/documents/{id}/save` -> `job.completed`: the api and a flusher (real processes)
   added, one user's socket open; sequential saves (each after an edit, so each is a new job)
   with the queue otherwise idle: time from sending the POST to the event on the socket.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import asyncpg
import httpx
import psutil
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from bench.matcher import _matcher_env, _users
from bench.processes import say
from bench.results import EventsRun, percentile
from bench.stack import Stack
from bench.systems import start as start_system
from deploy.embedded import free_port
from shared.domain.accounts import Principal
from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts

TICK_S = 0.01


async def _documents(stack: Stack, redis: Redis, keys: Keys, owner: Principal, n: int) -> list[str]:
    """N tenant documents written directly (Postgres row + the Redis copy, as `create` does)."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.executemany(
            "INSERT INTO documents (id, tenant_id, title, content, version, updated_by)"
            " VALUES ($1, $2, 'bench', '', 0, $3)",
            [(d, owner.tenant_id, owner.user_id) for d in ids],
        )
    finally:
        await conn.close()
    now = str(now_ms())
    async with redis.pipeline(transaction=False) as pipe:
        for d in ids:
            pipe.hset(
                keys.doc(d),
                mapping={
                    "v": 0,
                    "sv": 0,
                    "c": "",
                    "ti": "bench",
                    "acl": f"t:{owner.tenant_id}",
                    "by": owner.user_id,
                    "at": now,
                    "ca": now,
                },
            )
        await pipe.execute()
    return ids


async def _socket(port: int, user: Principal) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{port}/v1/ws/events",
        additional_headers={"Authorization": f"Bearer {user.user_id}"},
        open_timeout=60,
        ping_interval=None,
    )


async def _subscribe(ws: ClientConnection, doc_id: str) -> None:
    await ws.send(json.dumps({"type": "subscribe", "document_id": doc_id}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if frame["type"] == "subscribed":
            return
        if frame["type"] == "error":
            raise RuntimeError(f"subscribe refused: {frame}")


async def edit_latency(
    stack: Stack, port: int, rate: float, docs: int, sockets: int, duration: float
) -> dict[str, Any]:
    settings = Settings(redis_url=stack.redis_url, database_url=stack.database_url)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    scripts = Scripts(redis, keys)
    users = await _users(stack, redis, keys, sockets, seed=7)
    # _users puts everyone in one tenant: every user may read every document.
    ids = await _documents(stack, redis, keys, users[0], docs)
    sent: dict[tuple[str, int], float] = {}
    latencies: list[float] = []
    conns: list[ClientConnection] = []
    readers: list[asyncio.Task[None]] = []

    async def read(ws: ClientConnection) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("event") == "document.edited":
                t0 = sent.get((frame["document_id"], frame["version"]))
                if t0 is not None:
                    latencies.append((time.perf_counter() - t0) * 1000)

    try:
        for i, user in enumerate(users):
            ws = await _socket(port, user)
            await _subscribe(ws, ids[i % docs])
            conns.append(ws)
        readers = [asyncio.create_task(read(ws)) for ws in conns]
        say(f"events: {len(conns)} sockets subscribed to {docs} documents; {rate:.0f} edits/s")
        versions = dict.fromkeys(ids, 0)
        content = "x" * 256
        errors = 0

        def done(task: asyncio.Task[None]) -> None:
            nonlocal errors
            pending.discard(task)
            if not task.cancelled() and task.exception() is not None:
                errors += 1

        # Open loop: each tick sends what the schedule says is due, whatever came back.
        started = time.perf_counter()
        due, n = 0.0, 0
        pending: set[asyncio.Task[None]] = set()
        tenant_grant = (f"t:{users[0].tenant_id}",)
        while (now := time.perf_counter() - started) < duration:
            while due <= now:
                doc_id = ids[n % docs]
                task = asyncio.create_task(
                    _edit(scripts, doc_id, users[0].user_id, content, tenant_grant, versions, sent)
                )
                pending.add(task)
                task.add_done_callback(done)
                n += 1
                due = n / rate
            await asyncio.sleep(TICK_S)
        elapsed = time.perf_counter() - started
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(1.0)  # the last events' way to the sockets
        expected = n * sockets // docs
        ordered = sorted(latencies)
        return {
            "edits": n,
            "edits_per_s": n / elapsed,
            "sockets": len(conns),
            "documents": docs,
            "events_expected": expected,
            "events_received": len(ordered),
            "p50_ms": percentile(ordered, 50),
            "p99_ms": percentile(ordered, 99),
            "max_ms": ordered[-1] if ordered else None,
            "errors": errors,
        }
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        await redis.aclose()


async def _edit(
    scripts: Scripts,
    doc_id: str,
    author: str,
    content: str,
    grants: tuple[str, ...],
    versions: dict[str, int],
    sent: dict[tuple[str, int], float],
) -> None:
    # Edits of one document are applied in the order sent (one connection, FIFO), so the
    # version each gets is known before the reply.
    versions[doc_id] += 1
    sent[(doc_id, versions[doc_id])] = time.perf_counter()
    await scripts.edit(doc_id, content, None, author, now_ms(), grants)


async def save_latency(stack: Stack, port: int, saves: int) -> dict[str, Any]:
    settings = Settings(redis_url=stack.redis_url, database_url=stack.database_url)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    scripts = Scripts(redis, keys)
    api = start_system(stack, "redline", 30)
    [user] = await _users(stack, redis, keys, 1, seed=8)
    [doc_id] = await _documents(stack, redis, keys, user, 1)
    grants = (f"t:{user.tenant_id}",)
    latencies: list[float] = []
    ws = await _socket(port, user)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api.port}",
            headers={"Authorization": f"Bearer {user.user_id}"},
            timeout=30,
        ) as client:
            for i in range(saves):
                now = now_ms()
                await scripts.edit(doc_id, f"v{i}", None, user.user_id, now, grants)
                started = time.perf_counter()
                r = await client.post(f"/v1/documents/{doc_id}/save")
                if r.status_code != 202:
                    raise RuntimeError(f"save answered {r.status_code}: {r.text}")
                job_id = r.json()["job_id"]
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                    if frame.get("job_id") == job_id and frame.get("event") == "job.completed":
                        break
                latencies.append((time.perf_counter() - started) * 1000)
        ordered = sorted(latencies)
        return {
            "saves": saves,
            "save_p50_ms": percentile(ordered, 50),
            "save_p99_ms": percentile(ordered, 99),
            "save_max_ms": ordered[-1] if ordered else None,
        }
    finally:
        await ws.close()
        stack.children.stop("flusher")
        stack.children.stop("api")
        await redis.aclose()


async def run(
    stack: Stack, rate: float, docs: int, sockets: int, saves: int, duration: float
) -> EventsRun:
    port = free_port()
    kids = stack.children
    kids.spawn("matcher", ["-m", "services.matcher"], _matcher_env(stack, port))
    try:
        kids.wait_http("matcher", port)
        proc = psutil.Process(kids.procs["matcher"].pid)
        cpu0 = sum(proc.cpu_times()[:2])
        edits = await edit_latency(stack, port, rate, docs, sockets, duration)
        # Includes connecting and subscribing the sockets (a small part of it).
        edits["matcher_cpu_s"] = sum(proc.cpu_times()[:2]) - cpu0
        say(
            f"events: edit -> document.edited p50 {edits['p50_ms']} ms, p99 {edits['p99_ms']} ms"
            f" ({edits['events_received']}/{edits['events_expected']} events;"
            f" matcher CPU {edits['matcher_cpu_s']:.1f} s)"
        )
        saved = await save_latency(stack, port, saves) if saves > 0 else {}
        if saved:
            say(
                f"events: save -> job.completed p50 {saved['save_p50_ms']} ms,"
                f" p99 {saved['save_p99_ms']} ms"
            )
        return EventsRun(rate=rate, **edits, **saved)
    finally:
        kids.stop("matcher")
