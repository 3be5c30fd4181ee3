"""A Sentinel-watched Valkey for tests: a primary, a replica of it (REPLICAOF) and three sentinels
(quorum 2) with low down-after / failover timeouts, on free ports in a temporary folder of the
test's, all killed at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from deploy.embedded import Sentinel, Valkey, free_port

MASTER = "redline"


@dataclass
class Watched:
    primary: Valkey
    replica: Valkey
    sentinels: list[Sentinel]

    @property
    def hosts(self) -> str:
        """The REDLINE_REDIS_SENTINELS value."""
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def by_port(self, port: int) -> Valkey:
        return self.primary if port == self.primary.port else self.replica

    async def master_port(self) -> int | None:
        """The primary's port as the first sentinel that answers names it."""
        for s in self.sentinels:
            client = Redis(port=s.port, socket_timeout=1, decode_responses=True)
            try:
                addr = await client.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "get-master-addr-by-name", MASTER
                )
                return int(addr[1])
            except Exception:  # a sentinel down or busy: ask the next one
                continue
            finally:
                await client.aclose()
        return None

    async def ready(self) -> bool:
        """The replica is in sync and every sentinel sees the primary, its replica and the other
        two sentinels (only then can they agree on a failover)."""
        admin = Redis(port=self.primary.port, decode_responses=True)
        try:
            info = await admin.info("replication")
            if info.get("slave0", {}).get("state") != "online":
                return False
        finally:
            await admin.aclose()
        for s in self.sentinels:
            client = Redis(port=s.port, decode_responses=True)
            try:
                master = await client.sentinel_master(MASTER)  # type: ignore[no-untyped-call]
                if int(master.get("num-other-sentinels", 0)) < 2:
                    return False
                if int(master.get("num-slaves", 0)) < 1:
                    return False
            finally:
                await client.aclose()
        return True

    async def relinked(self) -> bool:
        """The current primary has a replica in sync again (the old primary, back)."""
        port = await self.master_port()
        if port is None:
            return False
        client = Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            info = await client.info("replication")
            return bool(info.get("slave0", {}).get("state") == "online")
        except Exception:
            return False
        finally:
            await client.aclose()

    async def failed_over(self, old_port: int) -> bool:
        """The sentinels name another primary and that one answers writes."""
        port = await self.master_port()
        if port is None or port == old_port:
            return False
        client = Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            info = await client.info("replication")
            return bool(info.get("role") == "master")
        except Exception:
            return False
        finally:
            await client.aclose()


async def wait_for(what: str, within_s: float, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll `check()` until true; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within_s:.0f}s")


@asynccontextmanager
async def watched_valkey(tmp_path: Path, *, aof: bool = True) -> AsyncIterator[Watched]:
    primary = Valkey(tmp_path / "primary", free_port(), aof=aof)
    await asyncio.to_thread(primary.start)
    replica = Valkey(tmp_path / "replica", free_port(), aof=aof, replicaof=primary.port)
    sentinels = [
        Sentinel(tmp_path / f"sentinel{i}", free_port(), primary.port, MASTER) for i in range(3)
    ]
    try:
        await asyncio.to_thread(replica.start)
        for s in sentinels:
            await asyncio.to_thread(s.start)
        w = Watched(primary, replica, sentinels)
        await wait_for("sentinels and replica ready", 30, w.ready)
        yield w
    finally:
        for s in sentinels:
            await asyncio.to_thread(s.stop)
        for v in (replica, primary):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(v.kill)
