"""Results: one record per (scenario, system) load run and per flush run, the targets they are
held to, and the JSON they are saved as."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import Recorder
from bench.meters import DirtySample

CDF_POINTS = 400


def run_meta(root: Path) -> dict[str, Any]:
    """What every saved run records about where it ran: when, the commit, the machine."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    ).stdout.strip()
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit or None,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
    }


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadRun:
    scenario: str  # "open", "lag" (constant rate) or "closed" (max throughput)
    system: str
    target_rate: float | None  # open loop: requests scheduled per second
    connections: int  # closed loop: concurrent connections; open loop: most used at once
    duration_s: float
    sent: int
    ok: int
    errors: dict[str, int]
    achieved_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    mean_ms: float | None
    dispatch_lag_p99_ms: float | None  # open loop: how late the generator itself sent
    pg_row_writes: int = 0  # rows written to real tables, from before the warm-up to the end
    pg_table_writes: dict[str, int] = field(default_factory=dict)
    warm_ok: int = 0  # warm-up edits answered 2xx (before the measured run)
    max_dirty_age_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)
    warm_statuses: dict[str, int] = field(default_factory=dict)
    timeline: list[int] = field(default_factory=list)  # 2xx answers in each second of the run
    cdf: list[tuple[float, float]] = field(default_factory=list)  # (latency ms, fraction)
    rep: int = 0  # the round, for a scenario run more than once (the open loop)
    dirty: list[DirtySample] = field(default_factory=list)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def edits(self) -> int:
        """Edits acknowledged over the span the row writes are counted for."""
        return self.ok + self.warm_ok

    @property
    def writes_per_edit(self) -> float | None:
        return self.pg_row_writes / self.edits if self.edits else None

    @property
    def edits_per_write(self) -> float | None:
        """None when nothing was written (every edit coalesced so far)."""
        return self.edits / self.pg_row_writes if self.pg_row_writes else None

    @property
    def pg_cpu_s(self) -> float | None:
        return self.cpu_s.get("postgres")

    @classmethod
    def of(cls, scenario: str, system: str, rec: Recorder, target_rate: float | None) -> LoadRun:
        ordered = sorted(rec.latencies_ms)
        lags = sorted(rec.lag_ms)
        window = rec.duration_s or 1.0
        # Closed loop: only answers inside the window count (late ones were sent near its end).
        done = sum(1 for t in rec.done_s if t <= window) if scenario == "closed" else rec.ok
        seconds = math.ceil(max(rec.done_s, default=0.0))
        timeline = [0] * seconds
        for t in rec.done_s:
            timeline[min(int(t), seconds - 1)] += 1
        step = max(1, len(ordered) // CDF_POINTS)
        cdf = [(ordered[i], (i + 1) / len(ordered)) for i in range(0, len(ordered), step)]
        if ordered:
            cdf.append((ordered[-1], 1.0))
        return cls(
            scenario=scenario,
            system=system,
            target_rate=target_rate,
            connections=rec.connections,
            duration_s=window,
            sent=rec.sent,
            ok=rec.ok,
            errors=dict(rec.errors),
            achieved_per_s=done / window,
            p50_ms=percentile(ordered, 50),
            p90_ms=percentile(ordered, 90),
            p99_ms=percentile(ordered, 99),
            p999_ms=percentile(ordered, 99.9),
            max_ms=ordered[-1] if ordered else None,
            mean_ms=sum(ordered) / len(ordered) if ordered else None,
            dispatch_lag_p99_ms=percentile(lags, 99),
            timeline=timeline,
            cdf=cdf,
        )


@dataclass
class FlushRun:
    docs: int
    seconds: float
    docs_per_s: float
    batches: int
    read: int
    written: int
    cleaned: int
    still_dirty: int
    cpu_s: dict[str, float] = field(default_factory=dict)
    # "text": plain documents (bench/backlog.py); "collab": co-edited ones, folded and trimmed
    # (bench/compaction.py), with the bare COPY + UPDATE of the same rows beside it.
    kind: str = "text"
    bare_docs_per_s: float | None = None


@dataclass
class PoolLatency:
    pooled: int
    calls: int
    matched: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    server_us_per_call: float | None
    server_p99_ms: float | None = None  # inside Valkey (slow log), without the round trip


@dataclass
class NotifyLatency:
    pairs: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    seeker_p50_ms: float | None
    seeker_p99_ms: float | None


@dataclass
class IdleSockets:
    sockets: int
    connected: int
    connect_s: float
    connects_per_s: float
    rss_base_mb: float
    rss_mb: float
    kb_per_socket: float
    broadcast_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    processes: int = 1


@dataclass
class EventsRun:
    """bench/events.py: edit -> document.edited on followers' sockets; save -> job.completed."""

    rate: float
    edits: int
    edits_per_s: float
    sockets: int
    documents: int
    events_expected: int
    events_received: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: int
    matcher_cpu_s: float | None = None  # the matcher process's CPU during the edit phase
    saves: int = 0
    save_p50_ms: float | None = None
    save_p99_ms: float | None = None
    save_max_ms: float | None = None


@dataclass
class CollabRun:
    """bench/collab.py: one shape x document size against one co-editing system."""

    system: str
    phase: str  # "cells" (the workload matrix) or "search" (a step of the max-rate search)
    key_rate: float  # keystrokes/s of each typist (human gaps around it)
    loadavg: float  # the machine's 1-minute load average at the end: noise from other work
    docs: int
    editors: int  # per document
    doc_bytes: int  # initial document size
    seconds: float  # of typing
    join_s: float  # opening and syncing every socket, before the typing
    keystrokes: int
    keystrokes_per_s: float
    deliveries: int  # (keystroke, co-editor) pairs applied by the co-editor
    expected: int  # keystrokes x (editors - 1)
    p50_ms: float | None  # keystroke -> each co-editor applied it
    p99_ms: float | None
    max_ms: float | None
    wire_sent: int  # bytes, WebSocket frame headers included, typing and settling only
    wire_received: int
    wire_per_keystroke: float | None  # (sent + received) / keystrokes / editors: per socket
    cpu_s: dict[str, float] = field(default_factory=dict)
    server_cpu_per_1k: float | None = None  # the api process or the Node server
    valkey_cpu_per_1k: float | None = None
    converged: bool = False  # every editor's final text equal, every keystroke in it
    stored_equal: bool | None = None  # Redline: equal to the folded Redis state and log
    errors: list[str] = field(default_factory=list)


@dataclass
class Target:
    name: str
    value: float | None
    limit: float
    passed: bool | None  # None: not measured in this run
    note: str = ""


@dataclass
class Report:
    meta: dict[str, Any]
    loads: list[LoadRun] = field(default_factory=list)
    flushes: list[FlushRun] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    profiles: dict[str, Any] | None = None  # bench/profiles.py

    match_latency: list[PoolLatency] = field(default_factory=list)
    idle_sockets: list[IdleSockets] = field(default_factory=list)  # one process, then two
    match_notify: NotifyLatency | None = None
    events: EventsRun | None = None
    collab: list[CollabRun] = field(default_factory=list)

    def load(self, scenario: str, system: str) -> LoadRun | None:
        return next((r for r in self.loads if (r.scenario, r.system) == (scenario, system)), None)

    def runs_of(self, scenario: str, system: str) -> list[LoadRun]:
        """Every run of `system` in `scenario`, in the order they ran (rounds of the open loop)."""
        return [r for r in self.loads if (r.scenario, r.system) == (scenario, system)]

    def to_json(self) -> dict[str, Any]:
        loads = []
        for run in self.loads:
            d = asdict(run)
            d.update(
                errors_total=run.error_count,
                writes_per_edit=run.writes_per_edit,
                edits_per_write=run.edits_per_write,
            )
            loads.append(d)
        return {
            "meta": self.meta,
            "loads": loads,
            "flushes": [asdict(f) for f in self.flushes],
            "targets": [asdict(t) for t in self.targets],
            "profiles": self.profiles,
            "match_latency": [asdict(m) for m in self.match_latency],
            "idle_sockets": [asdict(i) for i in self.idle_sockets],
            "match_notify": None if self.match_notify is None else asdict(self.match_notify),
            "events": None if self.events is None else asdict(self.events),
            "collab": [asdict(c) for c in self.collab],
        }


def save_json(report: Report, results_dir: Path, stamp: str) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.to_json(), indent=1, default=str)
    paths = [results_dir / "latest.json", results_dir / f"{stamp}.json"]
    for path in paths:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths
