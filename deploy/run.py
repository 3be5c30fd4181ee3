"""`make run`: everything on one machine.

Starts an embedded Valkey and PostgreSQL under .data/ when no URLs are configured, applies the
migrations, then runs the api, the matcher and the flusher as child processes. Ctrl-C (or SIGTERM)
stops the api and the matcher, lets the flusher drain every dirty document into Postgres, then
stops the servers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shared.embedded import Postgres, Valkey
from shared.migrations import migrate_url
from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"


def say(message: str) -> None:
    print(f"redline | {message}", flush=True)


def spawn(name: str, module: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # A session of its own: the terminal's Ctrl-C reaches only us, and we stop children in order.
    proc = subprocess.Popen(
        [sys.executable, "-m", module], env=env, cwd=ROOT, start_new_session=True
    )
    say(f"{name} started (pid {proc.pid})")
    return proc


def main() -> int:
    settings = Settings()
    env = dict(os.environ)
    valkey = postgres = None
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if settings.state_redis_url is None:
            port = int(os.environ.get("REDLINE_EMBEDDED_REDIS_PORT", "16379"))
            valkey = Valkey(DATA / "valkey", port, aof=True)
            say(
                f"starting embedded Valkey on 127.0.0.1:{port} (AOF everysec, data in .data/valkey)"
            )
            valkey.start()
            env["REDLINE_REDIS_URL"] = valkey.url
        if settings.database_url is None:
            port = int(os.environ.get("REDLINE_EMBEDDED_POSTGRES_PORT", "15432"))
            postgres = Postgres(DATA / "postgres", port)
            say(f"starting embedded PostgreSQL on 127.0.0.1:{port} (data in .data/postgres)")
            postgres.start()
            env["REDLINE_DATABASE_URL"] = postgres.url
        applied = asyncio.run(migrate_url(env["REDLINE_DATABASE_URL"]))
        say(f"migrations: {', '.join(applied) if applied else 'up to date'}")

        children["flusher"] = spawn("flusher", "services.flusher", env)
        children["api"] = spawn("api", "services.api", env)
        children["matcher"] = spawn("matcher", "services.matcher", env)
        say(f"api      http://{settings.api_host}:{settings.api_port}/v1/docs")
        say(f"matcher  ws://{settings.matcher_host}:{settings.matcher_port}/v1/ws/match")
        say(f"redis    {env.get('REDLINE_REDIS_URL') or settings.state_redis_url}")
        say(f"postgres {env.get('REDLINE_DATABASE_URL')}")
        say("Ctrl-C stops everything (the flusher saves every dirty document first)")

        while not stopping:
            for name, proc in children.items():
                if proc.poll() is not None:
                    say(f"{name} exited with code {proc.returncode}; stopping everything")
                    stopping = True
            time.sleep(0.2)
        return _shutdown(children, settings) or (
            1
            if any(
                p.returncode not in (0, -signal.SIGTERM, -signal.SIGINT) for p in children.values()
            )
            else 0
        )
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.kill()
        if postgres is not None:
            say("stopping PostgreSQL")
            postgres.stop()
        if valkey is not None:
            say("stopping Valkey")
            valkey.stop()


def _shutdown(children: dict[str, subprocess.Popen[bytes]], settings: Settings) -> int:
    # The api and the matcher first, so no edit or room arrives after the drain has started;
    # then the flusher drains.
    for name in ("api", "matcher", "flusher"):
        proc = children.get(name)
        if proc is None or proc.poll() is not None:
            continue
        say(f"stopping {name}" + (" (draining dirty documents)" if name == "flusher" else ""))
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(settings.shutdown_drain_s + 15 if name == "flusher" else 15)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in time; killing it")
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
