"""The servers every system under test shares: an embedded Valkey (AOF everysec, noeviction) and
an embedded, durable PostgreSQL, on free ports, with their data under a directory of their own
(`.data/bench/` by default, wiped at the start of each run)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import asyncpg
import psutil

from bench.peers import NAIVE_DDL
from bench.processes import Children, say
from deploy.embedded import Postgres, Valkey, free_port
from shared.store.migrations import migrate_url


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.valkey = Valkey(data_dir / "valkey", free_port(), aof=True)
        self.postgres = Postgres(data_dir / "postgres", free_port(), durable=True)
        self.children = Children(data_dir / "logs")
        self._started: list[str] = []

    @property
    def redis_url(self) -> str:
        return self.valkey.url

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def start(self) -> None:
        # A Postgres left running by an interrupted run would hold the directory: stop it first.
        with contextlib.suppress(Exception):
            self.postgres.stop(mode="immediate", timeout=20)
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir.mkdir(parents=True)
        say(f"starting Valkey on 127.0.0.1:{self.valkey.port} (AOF everysec) in {self.data_dir}")
        self.valkey.start()
        self._started.append("valkey")
        say(f"starting PostgreSQL on 127.0.0.1:{self.postgres.port} (durable: fsync on)")
        self._started.append("postgres")
        self.postgres.start()

    async def prepare(self) -> None:
        """Redline's migrations, and the naive peer's table (same shape, its own schema)."""
        applied = await migrate_url(self.database_url)
        say(f"migrations applied: {', '.join(applied) or 'none'}")
        conn = await asyncpg.connect(self.database_url)
        try:
            await conn.execute(NAIVE_DDL)
        finally:
            await conn.close()

    def stop(self) -> None:
        self.children.stop_all()
        if "postgres" in self._started:
            try:
                self.postgres.stop()
            except Exception as exc:
                say(f"PostgreSQL did not stop cleanly ({exc}); stopping it immediately")
                with contextlib.suppress(Exception):
                    self.postgres.stop(mode="immediate")
        if "valkey" in self._started:
            self.valkey.stop()
        self._started.clear()

    # Processes to measure -----------------------------------------------------------------
    def postgres_procs(self) -> list[psutil.Process]:
        """The postmaster and every backend and helper it has right now."""
        try:
            pid = int((self.postgres.pgdata / "postmaster.pid").read_text().split()[0])
            main = psutil.Process(pid)
            return [main, *main.children(recursive=True)]
        except (OSError, ValueError, IndexError, psutil.Error):
            return []

    def valkey_procs(self) -> list[psutil.Process]:
        proc = self.valkey.proc
        if proc is None or proc.poll() is not None:
            return []
        try:
            return [psutil.Process(proc.pid)]
        except psutil.Error:
            return []

    def child_procs(self, name: str) -> list[psutil.Process]:
        proc = self.children.procs.get(name)
        if proc is None or proc.poll() is not None:
            return []
        try:
            return [psutil.Process(proc.pid)]
        except psutil.Error:
            return []
