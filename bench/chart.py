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

COLORS = {"redline": "tab:red", "naive": "tab:blue", "ceiling": "tab:green"}


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
