"""The open-loop rounds (bench/suite.py `load_runs`, bench/targets.py): every system runs once a
round, each round starting one system later, and the p99 target compares the medians of each
system's rounds. Runs here are made up (no server): this is bookkeeping over what was measured."""

from __future__ import annotations

from bench.options import parse
from bench.results import LoadRun, Report
from bench.suite import load_runs
from bench.table import loads
from bench.targets import evaluate

P99_TARGET = "redline/ceiling p99 at 1000/s (open loop), <="


def open_run(system: str, p99_ms: float, rep: int) -> LoadRun:
    return LoadRun(
        scenario="open",
        system=system,
        target_rate=1000.0,
        connections=16,
        duration_s=20.0,
        sent=20_000,
        ok=20_000,
        errors={},
        achieved_per_s=1000.0,
        p50_ms=1.0,
        p90_ms=1.5,
        p99_ms=p99_ms,
        p999_ms=p99_ms * 2,
        max_ms=p99_ms * 3,
        mean_ms=1.1,
        dispatch_lag_p99_ms=0.5,
        rep=rep,
    )


def test_rounds_rotate_the_order_and_the_other_scenarios_run_once() -> None:
    opts = parse(["--scenarios", "open,closed,lag", "--open-reps", "3"])
    assert load_runs(opts) == [
        ("open", "redline", 0),
        ("open", "naive", 0),
        ("open", "ceiling", 0),
        ("open", "naive", 1),
        ("open", "ceiling", 1),
        ("open", "redline", 1),
        ("open", "ceiling", 2),
        ("open", "redline", 2),
        ("open", "naive", 2),
        ("closed", "redline", 0),
        ("closed", "naive", 0),
        ("closed", "ceiling", 0),
        ("lag", "redline", 0),
    ]


def test_quick_runs_one_round_and_lag_needs_redline() -> None:
    opts = parse(["--quick", "--scenarios", "open,lag", "--systems", "naive,ceiling"])
    assert load_runs(opts) == [("open", "naive", 0), ("open", "ceiling", 0)]


def test_the_p99_target_compares_medians_of_the_rounds() -> None:
    report = Report(meta={})
    # One outlier round each way: a single round's ratio would be 3.0 or 0.25.
    for rep, (mine, peer) in enumerate([(6.0, 2.0), (2.2, 2.0), (1.0, 4.0)]):
        report.loads += [open_run("redline", mine, rep), open_run("ceiling", peer, rep)]
    target = next(t for t in evaluate(report, parse([])) if t.name == P99_TARGET)
    assert target.value == 2.2 / 2.0
    assert target.passed is True
    assert "median of 3 rounds" in target.note and "6.00/2.00" in target.note
    # The table names each round.
    table = loads(report)
    assert "open 1" in table and "open 3" in table


def test_one_round_is_judged_alone() -> None:
    report = Report(meta={})
    report.loads += [open_run("redline", 3.0, 0), open_run("ceiling", 2.0, 0)]
    target = next(t for t in evaluate(report, parse([])) if t.name == P99_TARGET)
    assert target.value == 1.5 and target.passed is False
    assert "open 1" not in loads(report)
