"""What the bench measures besides the HTTP answers: Postgres row writes, CPU time per process
group, and Redline's flush lag sampled from its dirty indexes."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.process
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import asyncpg
import psutil

from shared.domain import dirty
from shared.infra.clients import redis_client
from shared.store.keys import Keys

# Rows inserted, updated or deleted, per table. Backends publish these counters when they go
# idle (at most once a second, else 10 s later, and at exit), so read them after the writers have
# stopped. Temporary tables (the flusher's COPY buffer) are listed as pg_temp.<name>.
ROW_WRITES = """
SELECT CASE WHEN schemaname LIKE 'pg_temp%' THEN 'pg_temp' ELSE schemaname END
       || '.' || relname AS name,
       sum(n_tup_ins + n_tup_upd + n_tup_del)::bigint AS writes
FROM pg_stat_user_tables GROUP BY 1
"""


async def table_writes(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["name"]: int(r["writes"]) for r in await conn.fetch(ROW_WRITES)}


def row_writes(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Rows written per table between two readings (tables with none left out)."""
    delta = {name: n - before.get(name, 0) for name, n in after.items()}
    return {name: n for name, n in sorted(delta.items()) if n}


def durable(writes: dict[str, int]) -> int:
    """Row writes to real tables: a temporary table's rows are never written to disk."""
    return sum(n for name, n in writes.items() if not name.startswith("pg_temp."))


Procs = Callable[[], list[psutil.Process]]


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        out[p.pid] = t.user + t.system
    return out


def _busy() -> float:
    """CPU seconds the machine's processes used: not idle or waiting on I/O, and not steal (time
    the hypervisor gave another guest) or guest time (Linux counts it in `user` already)."""
    t = psutil.cpu_times()
    left_out = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(t) - sum(getattr(t, name, 0.0) for name in left_out)


@dataclass
class CpuMeter:
    """CPU seconds used by each named group of processes between start() and stop(), plus what
    the rest of the machine used meanwhile ("other": noise from anything else running)."""

    groups: dict[str, Procs]
    _before: dict[str, dict[int, float]] = field(default_factory=dict)
    _busy0: float = 0.0

    def start(self) -> None:
        self._before = {name: _cpu(procs()) for name, procs in self.groups.items()}
        self._busy0 = _busy()

    def stop(self) -> dict[str, float]:
        busy = _busy() - self._busy0
        out: dict[str, float] = {}
        for name, procs in self.groups.items():
            before = self._before.get(name, {})
            # A process born during the run counts in full; one that died during it is lost.
            out[name] = sum(t - before.get(pid, 0.0) for pid, t in _cpu(procs()).items())
        out["other"] = max(0.0, busy - sum(out.values()))
        return out


@dataclass
class DirtySample:
    t_s: float
    dirty: int
    oldest_age_s: float | None


class DirtySampler:
    """Samples how many documents are dirty and the age of the oldest (from the first-dirty
    scores of the shards' dirty indexes) every `period` seconds while running.

    It samples in a process of its own, not on the load generator's event loop: a sample is a
    pipeline of three commands a shard (192 at 64 shards), whose packing and parsing held the
    open loop's dispatch for a millisecond or more four times a second. Requests due meanwhile
    went out late, and their latency counts from their scheduled time: measured, Redline's
    open-loop p99 rose from 2.2-3.1 ms to 4.2-7.5 ms with the sampler in the generator (the
    slow requests came in clusters every half second), a cost only Redline's runs carried."""

    def __init__(self, url: str, keys: Keys, period: float = 0.25) -> None:
        self.url = url
        self.keys = keys
        self.period = period
        self.samples: list[DirtySample] = []
        self._proc: multiprocessing.process.BaseProcess | None = None
        self._stop: Any = None
        self._recv: Connection | None = None

    def start(self, t0: float) -> None:
        """Sample from now on, with times counted from `t0` (time.perf_counter(): a monotonic
        clock every process shares)."""
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_sample_until,
            args=(self.url, self.keys, self.period, t0, self._stop, send),
            name="bench-dirty-sampler",
            daemon=True,
        )
        self._proc.start()
        send.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling and collect the samples (none, if the sampler died)."""
        if self._proc is None or self._recv is None:
            return
        self._stop.set()
        if self._recv.poll(timeout):
            with contextlib.suppress(EOFError):
                self.samples = self._recv.recv()
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
        self._recv.close()
        self._proc = None

    @property
    def max_age_s(self) -> float | None:
        """The oldest dirty age seen (0 when nothing was ever dirty; None: never sampled)."""
        if not self.samples:
            return None
        return max((s.oldest_age_s or 0.0) for s in self.samples)


def _sample_until(
    url: str, keys: Keys, period: float, t0: float, stop: Any, send: Connection
) -> None:
    """The sampler process: a sample every `period` seconds until `stop` is set, then the
    samples, sent back whole."""

    async def loop() -> list[DirtySample]:
        redis = redis_client(url)
        samples: list[DirtySample] = []
        try:
            while not stop.is_set():
                count, age = await dirty.dirty_count(redis, keys)
                samples.append(DirtySample(time.perf_counter() - t0, count, age))
                await asyncio.sleep(period)
        finally:
            await redis.aclose()
        return samples

    send.send(asyncio.run(loop()))
    send.close()
