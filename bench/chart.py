"""One PNG per run: latency CDFs, throughput per system, Redline's flush lag, and throughput over
time."""

from __future__ import annotations

import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.results import LoadRun, Report

COLORS = {
    "redline": "tab:red",
    "naive": "tab:blue",
    "ceiling": "tab:green",
    "hocuspocus": "tab:purple",
    "y-websocket": "tab:orange",
}


def _cdf(ax: Axes, runs: list[LoadRun], scenario: str) -> None:
    for r in runs:
        if r.scenario != scenario or not r.cdf:
            continue
        xs = [max(x, 1e-3) for x, _ in r.cdf]
        ys = [y for _, y in r.cdf]
        ax.plot(xs, ys, label=f"{r.system} (p99 {r.p99_ms or 0:.1f} ms)", color=COLORS[r.system])
    ax.set_xscale("log")
    ax.set_xlabel("edit latency, ms (log)")
    ax.set_ylabel("fraction of edits")
    ax.axhline(0.99, color="grey", lw=0.5, ls="--")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _bars(ax: Axes, runs: list[LoadRun]) -> None:
    systems = [s for s in COLORS if any(r.system == s for r in runs)]
    width = 0.38
    for k, scenario in enumerate(("open", "closed")):
        values = [
            next((r.achieved_per_s for r in runs if (r.scenario, r.system) == (scenario, s)), 0.0)
            for s in systems
        ]
        xs = [i + (k - 0.5) * width for i in range(len(systems))]
        bars = ax.bar(
            xs,
            values,
            width,
            label="constant rate" if scenario == "open" else "max (closed loop)",
            color=[COLORS[s] for s in systems],
            alpha=0.45 if scenario == "open" else 0.9,
        )
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(systems)), systems)
    ax.set_ylabel("edits/s answered 2xx")
    ax.legend(fontsize=8)


def _dirty(ax: Axes, runs: list[LoadRun], flush_interval: int) -> None:
    shown = False
    for r in runs:
        if r.system != "redline" or not r.dirty:
            continue
        ts = [s.t_s for s in r.dirty]
        ax.plot(
            ts, [s.oldest_age_s or 0.0 for s in r.dirty], label=f"oldest dirty age ({r.scenario})"
        )
        shown = True
    ax.axhline(flush_interval + 2, color="grey", ls="--", lw=0.8, label="target")
    ax.set_xlabel("s since run start")
    ax.set_ylabel("oldest dirty age, s")
    ax.set_title(f"Redline oldest dirty age (flush interval {flush_interval}s)", fontsize=9)
    if shown:
        ax.legend(fontsize=8)


def _timeline(ax: Axes, runs: list[LoadRun]) -> None:
    for r in runs:
        if r.scenario == "open" and r.timeline:
            ax.plot(range(len(r.timeline)), r.timeline, label=r.system, color=COLORS[r.system])
    ax.set_xlabel("s since run start")
    ax.set_ylabel("2xx answers per second")
    ax.set_title("constant-rate run: answers per second", fontsize=9)
    ax.legend(fontsize=8)


def draw(report: Report, results_dir: Path, stamp: str, flush_interval: int) -> list[Path]:
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    runs = report.loads
    _cdf(axes[0][0], runs, "open")
    axes[0][0].set_title("latency CDF, constant rate (from scheduled time)", fontsize=9)
    _cdf(axes[0][1], runs, "closed")
    axes[0][1].set_title("latency CDF, closed loop (max throughput)", fontsize=9)
    _bars(axes[0][2], runs)
    axes[0][2].set_title("throughput per system (one worker each)", fontsize=9)
    _dirty(axes[1][0], runs, flush_interval)
    _timeline(axes[1][1], runs)
    ax = axes[1][2]
    if report.flushes:
        ax.bar(range(1, len(report.flushes) + 1), [f.docs_per_s for f in report.flushes])
        ax.axhline(20_000, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("run")
        ax.set_ylabel("documents/s")
    ax.set_title("flush_dirty throughput (target 20,000/s)", fontsize=9)
    fig.suptitle(f"Redline bench {stamp}", fontsize=11)
    fig.tight_layout()
    results_dir.mkdir(parents=True, exist_ok=True)
    latest = results_dir / "latest.png"
    tmp = results_dir / "latest.png.tmp"
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(latest)
    copy = results_dir / f"{stamp}.png"
    shutil.copyfile(latest, copy)
    return [latest, copy]


def _collab_bars(ax: Axes, report: Report, value: str, label: str) -> None:
    runs = [c for c in report.collab if c.phase == "cells"]
    cells = list(dict.fromkeys(f"{c.docs}x{c.editors}\n{c.doc_bytes // 1024} KB" for c in runs))
    systems = list(dict.fromkeys(c.system for c in runs))
    width = 0.8 / max(1, len(systems))
    for k, system in enumerate(systems):
        mine = [c for c in runs if c.system == system]
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(mine))]
        ax.bar(
            xs,
            [getattr(c, value) or 0.0 for c in mine],
            width,
            label=system,
            color=COLORS.get(system),
        )
    ax.set_xticks(range(len(cells)), cells, fontsize=7)
    ax.set_ylabel(label)
    ax.legend(fontsize=8)


def draw_collab(report: Report, results_dir: Path, stamp: str) -> list[Path]:
    """The co-editing scenario's PNG: p99 and wire bytes per cell and system."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    _collab_bars(axes[0], report, "p50_ms", "keystroke -> co-editor p50, ms")
    _collab_bars(axes[1], report, "p99_ms", "keystroke -> co-editor p99, ms")
    axes[1].axhline(15, color="grey", ls="--", lw=0.8)
    _collab_bars(axes[2], report, "wire_per_keystroke", "wire bytes a keystroke a socket")
    axes[2].axhline(64, color="grey", ls="--", lw=0.8)
    fig.suptitle(f"Redline co-editing bench {stamp}", fontsize=11)
    fig.tight_layout()
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"collab-{stamp}.png"
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return [path]
