"""Real service processes for fault tests: start one with a given environment, wait until it is
ready, signal it, restart it, and always stop it (SIGTERM, then SIGKILL) when the test ends.

Each process writes stdout and stderr to a log file under the test's tmp_path; a failing test
prints the tail of every log, and `Service.tail()` gives it for assertion messages.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

Ready = Callable[["Service"], Awaitable[bool]]

# If pytest itself dies (SIGKILL, a crash), the kernel kills its service children too: no orphan
# keeps writing to the shared test servers. Resolved before any fork (Linux only).
_PR_SET_PDEATHSIG = 1
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
except (OSError, AttributeError):  # pragma: no cover
    _prctl = None


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def settings_env(settings: Settings) -> dict[str, str]:
    """The REDLINE_* variables that make a service build exactly these settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            # Complex fields are JSON-decoded by pydantic-settings.
            value = "[" + ",".join(f'"{v}"' for v in value) + "]"
        env[f"REDLINE_{name.upper()}"] = str(value)
    return env


def http_ready(url: str, timeout: float = 1.0) -> Ready:
    """Ready when GET `url` answers 200."""

    async def check(_: Service) -> bool:
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def log_ready(text: str) -> Ready:
    """Ready when the current run's log contains `text`."""

    async def check(service: Service) -> bool:
        return text in service.log(current_run=True)

    return check


class Service:
    """One service run as `python -m <module>`; restartable, logs appended to one file."""

    def __init__(
        self,
        name: str,
        module: str,
        env: Mapping[str, str],
        log_path: Path,
        ready: Ready,
        ready_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.module = module
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._run_offset = 0

    # Lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the process and wait until it is ready (or fail with the log's tail)."""
        assert not self.alive, f"{self.name} is already running"
        # Our environment minus any REDLINE_* of the caller's, so only `env` configures it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = self._spawn(env)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {code} while starting:\n{self.tail()}"
                )
            if await self.ready(self):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} was not ready within {self.ready_timeout:.0f}s:\n{self.tail()}"
                )
            await asyncio.sleep(0.1)

    def _spawn(self, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start #{self.starts} of {self.name} ---\n".encode())
            log.flush()
            self._run_offset = log.tell()
            return subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Out of the terminal's process group: a Ctrl-C reaches pytest, which stops us.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def send(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)

    async def wait(self, within_s: float) -> int:
        """The exit code (negative: killed by that signal); TimeoutError if still running."""
        assert self.proc is not None
        deadline = time.monotonic() + within_s
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {within_s:.0f}s")
            await asyncio.sleep(0.02)
        return code

    async def kill(self) -> int:
        """SIGKILL, no chance to clean up; returns the exit code (-9)."""
        self.send(signal.SIGKILL)
        return await self.wait(10)

    async def terminate(self, grace_s: float = 20.0) -> int:
        """SIGTERM and wait for the exit code; SIGKILL if it does not exit within `grace_s`."""
        self.send(signal.SIGTERM)
        try:
            return await self.wait(grace_s)
        except TimeoutError:
            return await self.kill()

    async def restart(self) -> None:
        if self.alive:
            await self.terminate()
        await self.start()

    # Logs --------------------------------------------------------------------------------
    def log(self, *, current_run: bool = False) -> str:
        try:
            with self.log_path.open("rb") as f:
                if current_run:
                    f.seek(self._run_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        text = self.log().splitlines()[-lines:]
        return f"--- last {len(text)} lines of {self.log_path} ---\n" + "\n".join(text)


@asynccontextmanager
async def running(
    name: str,
    module: str,
    env: Mapping[str, str],
    log_dir: Path,
    ready: Ready,
    *,
    ready_timeout: float = 30.0,
    stop_timeout: float = 20.0,
) -> AsyncIterator[Service]:
    """Run a service for the duration of the block; stop it however the block ends."""
    service = Service(name, module, env, log_dir / f"{name}.log", ready, ready_timeout)
    failed = False
    try:
        await service.start()
        yield service
    except BaseException:
        failed = True
        raise
    finally:
        if service.alive:
            await service.terminate(stop_timeout)
        if failed:
            # pytest shows captured output of failing tests: the logs explain most failures.
            print(service.tail())
