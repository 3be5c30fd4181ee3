"""The long-lived Redis readers of the api and the matcher come back by themselves after the state
Valkey is SIGKILLed and restarted: the matcher's event-stream reader (services/matcher/streams.py)
delivers edits again on a socket opened before the outage, the api's cache listener
(shared/infra/cache.py) is subscribed again, and both services' /readyz report the outage and
recover within 5 s. Real processes, a private Valkey (AOF everysec)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from deploy.embedded import free_port
from tests.conftest import Servers
from tests.support.faults import stack, stack_settings, state_valkey, team, until
from tests.support.processes import http_ready, running, settings_env

pytestmark = pytest.mark.slow

RECOVERY_S = 5.0


async def _ready(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=2) as c:
            return (await c.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_matcher_and_api_readers_reconnect_after_a_valkey_restart(
    migrated: Servers, tmp_path: Path
) -> None:
    async with state_valkey(tmp_path / "valkey", aof=True) as valkey:
        settings = stack_settings(migrated, valkey.url, matcher_port=free_port())
        matcher_base = f"http://127.0.0.1:{settings.matcher_port}"
        async with (
            stack(settings, tmp_path) as s,
            running(
                "matcher",
                "services.matcher",
                settings_env(settings),
                tmp_path,
                http_ready(f"{matcher_base}/readyz"),
            ) as matcher,
        ):
            users, doc_ids = await team(s.client, docs=1)
            owner, member = users
            doc_id = doc_ids[0]
            ws_url = f"ws://127.0.0.1:{settings.matcher_port}/v1/ws/events"
            async with connect(
                ws_url, additional_headers={"Authorization": f"Bearer {owner.token}"}
            ) as ws:
                await ws.send(json.dumps({"type": "subscribe", "document_id": doc_id}))
                assert (await _frame(ws, lambda f: f["type"] == "subscribed"))["type"]
                await _edit_seen(s.client, ws, member.auth, doc_id)

                await asyncio.to_thread(valkey.kill)
                await asyncio.sleep(1.5)
                assert not await _ready(f"{matcher_base}/readyz")
                assert not await s.ready()
                assert matcher.alive and s.api.alive and s.flusher.alive
                await asyncio.to_thread(valkey.start)
                started = time.monotonic()
                await until("the api ready", RECOVERY_S, s.ready)
                await until(
                    "the matcher ready", RECOVERY_S, lambda: _ready(f"{matcher_base}/readyz")
                )

                async def cache_listening() -> bool:
                    r = await s.client.get("/v1/stats/cache", headers=owner.auth)
                    return r.status_code == 200 and r.json()["cache_listener"] is True

                await until("the api's cache listener", RECOVERY_S, cache_listening)
                ready_s = time.monotonic() - started
                # The socket opened before the outage hears an edit made after it.
                await _edit_seen(s.client, ws, member.auth, doc_id, within_s=RECOVERY_S)
                print(
                    f"readers back {ready_s:.2f}s after Valkey listened; edit event seen"
                    f" {time.monotonic() - started:.2f}s after"
                )


async def _frame(ws: Any, match: Any, within_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail("no matching frame in time")
        try:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            pytest.fail("no matching frame in time")
        if match(frame):
            return frame


async def _edit_seen(
    client: httpx.AsyncClient,
    ws: Any,
    auth: dict[str, str],
    doc_id: str,
    within_s: float = 5.0,
) -> None:
    deadline = time.monotonic() + within_s
    while True:
        r = await client.put(
            f"/v1/documents/{doc_id}/content", json={"content": f"at {time.time()}"}, headers=auth
        )
        if r.status_code == 202:
            break
        assert r.status_code == 503, r.text
        assert time.monotonic() < deadline, "edits not accepted again in time"
        await asyncio.sleep(0.1)
    version = r.json()["version"]
    await _frame(
        ws,
        lambda f: f.get("event") == "document.edited" and f.get("version") == version,
        max(0.5, deadline - time.monotonic()),
    )
