"""Child processes: every one the bench starts is registered here and stopped on the way out,
whatever happened (error, Ctrl-C, SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(message: str) -> None:
    print(f"bench | {message}", flush=True)


def child_env(**values: str | int) -> dict[str, str]:
    """Our environment without any REDLINE_* setting of the caller's, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    env.update({k: str(v) for k, v in values.items()})
    return env


class Children:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(
        self, name: str, args: list[str], env: dict[str, str], program: str = sys.executable
    ) -> subprocess.Popen[bytes]:
        """Start `program args` (Python by default; the co-editing peers run on Node)."""
        self.stop(name)  # one process per name: a leftover of a failed start is not forgotten
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{name}.log").open("ab") as log:
            # A session of its own: the terminal's Ctrl-C reaches only us; we stop it in order.
            proc = subprocess.Popen(
                [program, *args],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name: str, timeout: float = 15) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; the exit code (None if it was not running)."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {timeout:.0f}s; killing it")
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name, timeout=10)

    def wait_http(self, name: str, port: int, path: str = "/healthz", timeout: float = 30) -> None:
        proc = self.procs[name]
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{port}{path}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with code {proc.returncode} while starting:\n"
                    + self.log_tail(name)
                )
            try:
                with opener.open(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer {url} within {timeout:.0f}s")
