"""bench/aof_kill.py at its smallest: one SIGKILL per (policy, disk) cell against real Valkey
processes on the real disk (under .data/, as the tool's own default), short write windows.

Only `always` on an idle disk has a guaranteed answer: Valkey write()s and fsyncs the AOF before
it replies, so a killed process cannot take an acknowledged INCR with it. Whether everysec loses
writes on the busy disk depends on timing (the full run measures how often); here only the
report's shape is checked for it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.aof_kill import Options, measure, table

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent


async def test_one_kill_per_cell_and_always_on_an_idle_disk_loses_nothing() -> None:
    data_dir = ROOT / ".data" / f"test-aof-kill-{os.getpid()}"
    opts = Options(
        kills=1,
        clients=2,
        seed=7,
        seconds_per_kill=30,
        write_s=(0.1, 0.2),
        busy_warmup_s=0.3,
        data_dir=data_dir,
    )
    lines: list[str] = []
    report = await measure(opts, progress=lines.append)
    print("\n" + table(report))

    assert report.complete, lines
    assert [(c.policy, c.disk) for c in report.cells] == [
        ("everysec", "idle"),
        ("always", "idle"),
        ("everysec", "busy"),
        ("always", "busy"),
    ]
    for cell in report.cells:
        assert len(cell.kills) == 1
        run = cell.kills[0]
        assert run.acked > 0, (cell.policy, cell.disk, run)
        assert 0 <= run.lost <= run.acked
        # Every value up to the last reply was applied before the kill; lost counts the
        # acknowledged ones the restart did not bring back.
        assert run.lost == 0 or run.recovered < run.last_acked
        assert cell.writes_per_s is not None and cell.writes_per_s > 0
        assert cell.latency_ms(50) is not None
    always = report.cell("always", "idle")
    assert always is not None
    assert always.lost_total == 0, always.kills
    assert always.kills[0].recovered >= always.kills[0].last_acked

    saved = json.loads(json.dumps(report.to_json(), default=str))
    assert saved["complete"] is True and saved["meta"]["seed"] == 7
    first = saved["cells"][0]
    assert set(first) >= {"policy", "disk", "kills", "lossy_kills", "lost_total", "lost_max"}
    assert set(first) >= {"writes_per_s", "p50_ms", "p99_ms", "runs"}
    assert len(table(report).splitlines()) == 2 + len(report.cells)
    assert len(lines) == 1 + 2 * len(report.cells)  # the plan, then a line per kill and per cell
    assert not data_dir.exists()  # the tool wipes its servers' data
