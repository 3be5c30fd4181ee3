"""`make run` supervises (deploy/run.py): a dead child or embedded server is restarted with
backoff and the runner says so; a crash loop is said loudly; SIGTERM still drains in order."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from redis import Redis

from deploy.embedded import Postgres, Valkey, free_port
from deploy.run import CRASH_LOOP, Restarts, Supervisor
from tests.conftest import Servers, make_settings
from tests.support.processes import ROOT, settings_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_backoff_grows_to_its_cap_and_resets_after_a_stable_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    r = Restarts("api", base_s=1, cap_s=8, stable_s=30, clock=clock, rng=random.Random(7))
    r.started()
    delays = []
    for _ in range(7):
        clock.now += 0.1  # dies at once, every time
        delays.append(r.died("exited with code 1"))
        assert not r.ready()
        clock.now = r.due or 0
        assert r.ready()
        r.started()
    ceilings = [1, 2, 4, 8, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    out = capsys.readouterr().out
    assert "api exited with code 1; restarting in" in out
    assert out.count("crash-looping") == 1 and CRASH_LOOP == 5
    # Up for longer than stable_s: the next death starts the backoff over.
    clock.now += 31
    assert r.died("exited with code 1") <= 1
    assert r.failures == 1


def test_a_child_that_always_fails_is_restarted_and_called_a_crash_loop(
    capsys: pytest.CaptureFixture[str],
) -> None:
    supervisor = Supervisor(dict(os.environ))
    fast = Restarts("broken", base_s=0.01, cap_s=0.05)
    supervisor.add_child("broken", [sys.executable, "-c", "raise SystemExit(3)"], fast)
    deadline = time.monotonic() + 20
    while fast.failures <= CRASH_LOOP and time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.01)
    supervisor.kill()
    out = capsys.readouterr().out
    assert fast.failures > CRASH_LOOP, out
    assert "broken exited with code 3; restarting in" in out
    assert out.count("broken is crash-looping") == 1
    # Every death was followed by a start: it kept trying, it did not give up or spin silently.
    assert out.count("broken started (pid") == fast.failures


def test_a_dead_embedded_valkey_is_restarted_with_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    valkey = Valkey(tmp_path / "valkey", free_port(), aof=True)
    valkey.start()
    try:
        client = Redis.from_url(valkey.url)
        client.set("kept", "1")
        client.close()
        supervisor = Supervisor({})
        supervisor.add_server("embedded Valkey", valkey, Restarts("embedded Valkey", base_s=0.05))
        time.sleep(1.1)  # appendfsync everysec
        valkey.kill()
        deadline = time.monotonic() + 15
        while not valkey.is_running() and time.monotonic() < deadline:
            supervisor.check()
            time.sleep(0.05)
        out = capsys.readouterr().out
        assert "embedded Valkey stopped; restarting in" in out
        assert "embedded Valkey restarted" in out
        client = Redis.from_url(valkey.url)
        assert client.get("kept") == b"1"
        client.close()
    finally:
        valkey.kill()


@pytest.mark.slow
def test_a_dead_embedded_postgres_is_restarted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    postgres = Postgres(tmp_path / "pg", free_port(), durable=False)
    postgres.start()
    try:
        supervisor = Supervisor({})
        supervisor.add_server(
            "embedded PostgreSQL", postgres, Restarts("embedded PostgreSQL", base_s=0.05)
        )
        pid = int((postgres.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            supervisor.check()
            if "restarted" in (out := capsys.readouterr().out):
                break
            time.sleep(0.1)
        assert "embedded PostgreSQL restarted" in out, out
        assert postgres.running()
    finally:
        if postgres.is_running():
            postgres.stop(mode="immediate")


@pytest.mark.slow
async def test_make_run_restarts_a_killed_flusher_and_still_drains_on_sigterm(
    migrated: Servers, tmp_path: Path
) -> None:
    valkey = Valkey(tmp_path / "valkey", free_port(), aof=False)
    await asyncio.to_thread(valkey.start)
    servers = dataclasses.replace(migrated, redis_url=valkey.url)
    settings = make_settings(
        servers, api_port=free_port(), matcher_port=free_port(), flusher_metrics_port=free_port()
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update(settings_env(settings), PYTHONUNBUFFERED="1")
    log = tmp_path / "run.log"
    runner = _start_runner(env, log)
    try:

        async def api_ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=1) as c:
                    r = await c.get(f"http://127.0.0.1:{settings.api_port}/readyz")
                    return r.status_code == 200
            except httpx.HTTPError:
                return False

        async def wait(
            what: str, check: Callable[[], Awaitable[bool]], within_s: float = 30
        ) -> None:
            deadline = time.monotonic() + within_s
            while time.monotonic() < deadline:
                assert runner.poll() is None, log.read_text()[-3000:]
                if await check():
                    return
                await asyncio.sleep(0.1)
            pytest.fail(f"{what} within {within_s}s:\n{log.read_text()[-3000:]}")

        async def logged(text: str, times: int = 1) -> bool:
            return log.read_text().count(text) >= times

        await wait("api ready", api_ready)
        await wait("flusher ready", lambda: logged("flusher ready"))
        first = re.findall(r"flusher started \(pid (\d+)\)", log.read_text())
        os.kill(int(first[0]), signal.SIGKILL)
        await wait("a restart", lambda: logged("flusher exited with code -9; restarting in"))

        await wait("a second flusher", lambda: logged("flusher started (pid", 2))
        await wait("the new flusher ready", lambda: logged("flusher ready", 2))
        assert await api_ready()
        runner.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(runner.wait, 60)
        text = log.read_text()
        assert code == 0, text[-3000:]
        order = [text.index(f"stopping {name}") for name in ("api", "matcher", "flusher")]
        assert order == sorted(order)
        assert "stopping flusher (draining dirty documents)" in text
        assert "drained:" in text, text[-3000:]
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        valkey.kill()


def _start_runner(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "deploy.run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
