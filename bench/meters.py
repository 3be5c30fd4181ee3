"""What the bench measures besides the HTTP answers: Postgres row writes, CPU time per process
group, and Redline's flush lag sampled from its dirty indexes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import psutil
from redis.asyncio import Redis

from shared.domain import dirty
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
    scores of the shards' dirty indexes) every `period` seconds while running."""

    def __init__(self, redis: Redis, keys: Keys, period: float = 0.25) -> None:
        self.redis = redis
        self.keys = keys
        self.period = period
        self.samples: list[DirtySample] = []

    async def sample(self, t0: float) -> DirtySample:
        count, age = await dirty.dirty_count(self.redis, self.keys)
        s = DirtySample(time.perf_counter() - t0, count, age)
        self.samples.append(s)
        return s

    async def run(self, t0: float) -> None:
        while True:
            await self.sample(t0)
            await asyncio.sleep(self.period)

    @property
    def max_age_s(self) -> float | None:
        """The oldest dirty age seen (0 when nothing was ever dirty; None: never sampled)."""
        if not self.samples:
            return None
        return max((s.oldest_age_s or 0.0) for s in self.samples)
