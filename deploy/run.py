"""`make run`: everything on one machine, supervised.

Starts an embedded Valkey and PostgreSQL under .data/ when no URLs are configured, applies the
migrations, then runs the api, the matcher and the flusher as child processes. A child that dies
is restarted with backoff (and the runner says so); so is an embedded server. Ctrl-C (or SIGTERM)
stops the api and the matcher, lets the flusher drain every dirty document into Postgres, then
stops the servers.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deploy.embedded import Postgres, Valkey
from shared.settings import Settings
from shared.store.migrations import migrate_url

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"

# A child that ran this long before dying was healthy: its next restart starts the backoff over.
STABLE_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# This many quick deaths in a row is a crash loop: said loudly, then retried at the capped pace.
CRASH_LOOP = 5


def say(message: str) -> None:
    print(f"redline | {message}", flush=True)


def spawn(name: str, command: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: the terminal's Ctrl-C reaches only us, and we stop children in order.
    proc = subprocess.Popen(list(command), env=env, cwd=ROOT, start_new_session=True)
    say(f"{name} started (pid {proc.pid})")
    return proc


@dataclass
class Restarts:
    """When a dead thing may start again: capped exponential backoff with jitter, reset once it
    stayed up `STABLE_S`, and a crash-loop warning after `CRASH_LOOP` quick deaths in a row."""

    name: str
    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    stable_s: float = STABLE_S
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    started_at: float = 0.0
    due: float | None = None

    def started(self) -> None:
        self.started_at = self.clock()
        self.due = None

    def died(self, what: str) -> float:
        """Schedule the restart; returns the delay. Says what happened, and a crash loop."""
        now = self.clock()
        if now - self.started_at >= self.stable_s:
            self.failures = 0
        self.failures += 1
        ceiling = min(self.cap_s, self.base_s * 2.0 ** (self.failures - 1))
        delay = ceiling / 2 + self.rng.uniform(0, ceiling / 2)
        self.due = now + delay
        say(f"{self.name} {what}; restarting in {delay:.1f}s (restart {self.failures} in a row)")
        if self.failures == CRASH_LOOP:
            say(
                f"{self.name} is crash-looping: it died {CRASH_LOOP} times in a row within"
                f" {self.stable_s:.0f}s of starting; retrying every ~{self.cap_s:.0f}s at most,"
                " see its output above"
            )
        return delay

    def ready(self) -> bool:
        return self.due is not None and self.clock() >= self.due


class Server(Protocol):
    def is_running(self) -> bool: ...

    def start(self, timeout: float = ...) -> None: ...


@dataclass
class Child:
    name: str
    command: Sequence[str]
    restarts: Restarts
    proc: subprocess.Popen[bytes] | None = None


class Supervisor:
    """The runner's children and embedded servers; `check()` restarts whatever died."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.children: dict[str, Child] = {}
        self.servers: dict[str, tuple[Server, Restarts]] = {}

    def add_child(
        self, name: str, command: Sequence[str], restarts: Restarts | None = None
    ) -> None:
        child = Child(name, command, restarts or Restarts(name))
        self.children[name] = child
        self._start(child)

    def add_server(self, name: str, server: Server, restarts: Restarts | None = None) -> None:
        restarts = restarts or Restarts(name)
        restarts.started()
        self.servers[name] = (server, restarts)

    def _start(self, child: Child) -> None:
        child.proc = spawn(child.name, child.command, self.env)
        child.restarts.started()

    def check(self) -> None:
        # Servers first: a child restarted against a dead server would only die again.
        for server, restarts in self.servers.values():
            if server.is_running():
                continue
            if restarts.due is None:
                restarts.died("stopped")
            elif restarts.ready():
                try:
                    server.start()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    restarts.started()
                    restarts.died(f"did not start ({exc})")
                else:
                    say(f"{restarts.name} restarted")
                    restarts.started()
        for child in self.children.values():
            assert child.proc is not None
            code = child.proc.poll()
            if code is None:
                continue
            if child.restarts.due is None:
                child.restarts.died(f"exited with code {code}")
            elif child.restarts.ready():
                self._start(child)

    def stop(self, drain_s: float) -> None:
        # The api and the matcher first, so no edit or room arrives after the drain has started;
        # then the flusher drains.
        for name in ("api", "matcher", "flusher"):
            child = self.children.get(name)
            if child is None or child.proc is None or child.proc.poll() is not None:
                continue
            say(f"stopping {name}" + (" (draining dirty documents)" if name == "flusher" else ""))
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(drain_s + 15 if name == "flusher" else 15)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in time; killing it")
                child.proc.kill()
                child.proc.wait()

    def kill(self) -> None:
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is None:
                child.proc.kill()

    def exit_code(self) -> int:
        clean = (0, -signal.SIGTERM, -signal.SIGINT)
        procs = [c.proc for c in self.children.values() if c.proc is not None]
        return 1 if any(p.returncode not in clean for p in procs) else 0


def main() -> int:
    settings = Settings()
    env = dict(os.environ)
    valkey = postgres = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    supervisor = Supervisor(env)
    try:
        if settings.state_redis_url is None:
            port = int(os.environ.get("REDLINE_EMBEDDED_REDIS_PORT", "16379"))
            valkey = Valkey(DATA / "valkey", port, aof=True)
            say(
                f"starting embedded Valkey on 127.0.0.1:{port} (AOF everysec, {valkey.allocator},"
                " data in .data/valkey)"
            )
            valkey.start()
            env["REDLINE_REDIS_URL"] = valkey.url
            supervisor.add_server("embedded Valkey", valkey)
        if settings.database_url is None:
            port = int(os.environ.get("REDLINE_EMBEDDED_POSTGRES_PORT", "15432"))
            postgres = Postgres(DATA / "postgres", port)
            say(f"starting embedded PostgreSQL on 127.0.0.1:{port} (data in .data/postgres)")
            postgres.start()
            env["REDLINE_DATABASE_URL"] = postgres.url
            supervisor.add_server("embedded PostgreSQL", postgres)
        applied = asyncio.run(migrate_url(env["REDLINE_DATABASE_URL"]))
        say(f"migrations: {', '.join(applied) if applied else 'up to date'}")

        for name in ("flusher", "api", "matcher"):
            supervisor.add_child(name, [sys.executable, "-m", f"services.{name}"])
        say(f"api      http://{settings.api_host}:{settings.api_port}/v1/docs")
        say(f"matcher  ws://{settings.matcher_host}:{settings.matcher_port}/v1/ws/match")
        say(f"redis    {env.get('REDLINE_REDIS_URL') or settings.state_redis_url}")
        say(f"postgres {env.get('REDLINE_DATABASE_URL')}")
        say("Ctrl-C stops everything (the flusher saves every dirty document first)")

        while not stopping:
            supervisor.check()
            time.sleep(0.2)
        supervisor.stop(settings.shutdown_drain_s)
        return supervisor.exit_code()
    finally:
        supervisor.kill()
        if postgres is not None and postgres.is_running():
            say("stopping PostgreSQL")
            postgres.stop()
        if valkey is not None:
            say("stopping Valkey")
            valkey.stop()


if __name__ == "__main__":
    sys.exit(main())
