"""Two real matcher processes (python -m services.matcher) on different ports: a match made on
one reaches the partner connected to the other, through Redis pub/sub."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

from deploy.embedded import free_port
from shared.settings import Settings
from shared.store.keys import Keys
from tests.services.matcher.conftest import make_user, open_socket, recv_type, send
from tests.support.processes import http_ready, running, settings_env


async def test_partner_on_another_process_is_notified(
    settings: Settings,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
    tmp_path: Path,
) -> None:
    ports = free_port(), free_port()
    envs = [
        {**settings_env(settings), "REDLINE_MATCHER_PORT": str(port), "REDLINE_LOG_LEVEL": "INFO"}
        for port in ports
    ]
    ada = await make_user(api, db, "ada", ["chess", "go"])
    bob = await make_user(api, db, "bob", ["go", "jazz"])
    async with (
        running(
            "matcher-1",
            "services.matcher",
            envs[0],
            tmp_path,
            http_ready(f"http://127.0.0.1:{ports[0]}/readyz"),
        ) as first,
        running(
            "matcher-2",
            "services.matcher",
            envs[1],
            tmp_path,
            http_ready(f"http://127.0.0.1:{ports[1]}/readyz"),
        ),
    ):
        url1, url2 = (f"ws://127.0.0.1:{p}" for p in ports)
        async with open_socket(url1, ada) as a, open_socket(url2, bob) as b:
            await recv_type(a, "queued")
            await recv_type(b, "queued")
            started = asyncio.get_running_loop().time()
            await send(b, type="find_match")
            mine = await recv_type(b, "match_found")
            theirs = await recv_type(a, "match_found")
            elapsed = asyncio.get_running_loop().time() - started
            assert mine["partner_id"] == ada.user_id, first.tail()
            assert theirs["partner_id"] == bob.user_id
            assert mine["document_id"] == theirs["document_id"]
            assert mine["shared_interests"] == theirs["shared_interests"] == ["go"]
            assert elapsed < 5
            # Delivered live on the other process, so it no longer waits in the inbox.
            for _ in range(50):
                if await redis.xlen(keys.inbox(ada.user_id)) == 0:
                    break
                await asyncio.sleep(0.05)
            assert await redis.xlen(keys.inbox(ada.user_id)) == 0
        # Both processes took their sockets out of the pool on disconnect.
        for _ in range(50):
            if await redis.zcard(keys.pool_members("en")) == 0:
                break
            await asyncio.sleep(0.05)
        assert await redis.zcard(keys.pool_members("en")) == 0
    r = await api.get(f"/v1/documents/{mine['document_id']}", headers=ada.auth)
    assert r.status_code == 200
