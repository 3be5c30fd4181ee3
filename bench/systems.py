"""The systems under test, each started fresh for a scenario and stopped after it:

- redline: `python -m services.api` + `python -m services.flusher`, as deploy/run.py runs them;
- naive, ceiling: `python -m bench.peers <name>` (bench/peers.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

from bench.processes import child_env, say
from bench.stack import Stack
from deploy.embedded import free_port
from shared.settings import Settings
from shared.store.keys import Keys


@dataclass(frozen=True)
class Running:
    system: str
    port: int
    server: str  # child name of the HTTP process
    flusher: str | None  # child name of Redline's flusher


def redline_settings(stack: Stack, flush_interval: int, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": stack.redis_url,
        "database_url": stack.database_url,
        "flush_interval": flush_interval,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _env(stack: Stack, port: int, flush_interval: int) -> dict[str, str]:
    return child_env(
        REDLINE_REDIS_URL=stack.redis_url,
        REDLINE_DATABASE_URL=stack.database_url,
        REDLINE_API_HOST="127.0.0.1",
        REDLINE_API_PORT=port,
        REDLINE_FLUSH_INTERVAL=flush_interval,
        # Setup makes a hundred accounts: cheap hashes and no login limit (never in production).
        REDLINE_ARGON2_MEMORY_KIB=1024,
        REDLINE_ARGON2_TIME_COST=1,
        REDLINE_ARGON2_PARALLELISM=1,
        REDLINE_LOGIN_RATE=100_000,
        REDLINE_CREATE_RATE=100_000,  # the workload creates its documents as one user
        # 100 typists at thousands of edits/s is ~50 edits/s each on one document, the default
        # limit: lift it so the bench measures the edit path (the GCRA check in edit.lua still
        # runs on every edit, so its cost is counted).
        REDLINE_EDIT_RATE=1_000_000,
        REDLINE_LOG_LEVEL="INFO",
    )


def start(
    stack: Stack, system: str, flush_interval: int, extra: dict[str, str | int] | None = None
) -> Running:
    port = free_port()
    env = _env(stack, port, flush_interval)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    kids = stack.children
    if system == "redline":
        _forget_flusher(stack, flush_interval)
        kids.spawn("api", ["-m", "services.api"], env)
        kids.spawn("flusher", ["-m", "services.flusher"], env)
        kids.wait_http("api", port)
        _wait_flusher(stack, flush_interval)
        return Running(system, port, "api", "flusher")
    kids.spawn(system, ["-m", "bench.peers", system], env)
    kids.wait_http(system, port)
    return Running(system, port, system, None)


def _wait_flusher(stack: Stack, flush_interval: int, timeout: float = 30) -> None:
    """The arq worker writes its health key on its first poll: then it is running its crons."""
    settings = redline_settings(stack, flush_interval)
    key = _health_key(settings)
    client = redis.Redis.from_url(settings.queue_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            proc = stack.children.procs["flusher"]
            if proc.poll() is not None:
                raise RuntimeError(
                    f"flusher exited with code {proc.returncode}:\n"
                    + stack.children.log_tail("flusher")
                )
            if client.exists(key):
                return
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"flusher did not report healthy within {timeout:.0f}s")


def _health_key(settings: Settings) -> str:
    return Keys(settings.key_prefix, settings.doc_shards).flusher_health


def _forget_flusher(stack: Stack, flush_interval: int) -> None:
    """Drop what the previous (stopped) flusher process left in Redis: its health key, which
    lives on for an hour (we wait for the new one's), and any flush lease it held. claim.lua
    leases only shards with something to flush and a pass releases them, but a flusher stopped
    mid-pass leaves its leases for flush_lease_ms (15 s), and a freshly started flusher would
    then skip those shards and the run would measure that instead of the steady state. The bench
    stops every flusher before starting the next one, so dropping the leases of a process that
    is gone is safe. (The bench's stack is plain Redis, never Sentinel: `from_url` is enough.)
    """
    settings = redline_settings(stack, flush_interval)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    queue = redis.Redis.from_url(settings.queue_url)
    state = redis.Redis.from_url(settings.state_url)
    try:
        queue.delete(_health_key(settings))
        leases = [keys.flush_lease(shard) for shard in range(keys.shards)]
        dropped = cast(int, state.delete(*leases))  # sync client: an int
    finally:
        queue.close()
        state.close()
    if dropped:
        say(f"redline: dropped {dropped} flush leases left by the previous flusher process")
