"""The co-editing max-rate search (bench/collab.py): a rate is kept or lost by most of its
trials, the ladder stops at the first rate lost, the gap is then halved, the servers' trials
alternate, and the target reads the fastest rate kept. Trials here are made up (no server): the
search is pure bookkeeping over what each trial measured."""

from __future__ import annotations

from collections.abc import Callable

from bench.collab import (
    SEARCH_P99_MS,
    SEARCH_RATES,
    SEARCH_SHAPE,
    Server,
    Trial,
    decided,
    max_sustained,
    search,
    step_rate,
)
from bench.options import parse
from bench.results import CollabRun, Report
from bench.targets import evaluate


async def _no_documents(contents: list[str]) -> list[str]:
    return []


def server(system: str) -> Server:
    return Server(system, "ws://unused", {}, [], _no_documents)


def trial_run(system: str, rate: float, p99_ms: float, *, lost: int = 0) -> CollabRun:
    docs, editors = SEARCH_SHAPE
    keystrokes = int(rate * 2)
    return CollabRun(
        system=system,
        phase="search",
        key_rate=rate / (docs * editors),
        loadavg=0.0,
        docs=docs,
        editors=editors,
        doc_bytes=2048,
        seconds=2.0,
        join_s=0.0,
        keystrokes=keystrokes,
        keystrokes_per_s=rate * 0.98,
        deliveries=keystrokes - lost,
        expected=keystrokes,
        p50_ms=1.0,
        p99_ms=p99_ms,
        max_ms=p99_ms,
        wire_sent=0,
        wire_received=0,
        wire_per_keystroke=None,
        cpu_s={"other": 3.0},  # 1.5 cores over its 2 s
    )


Verdicts = Callable[[str, float, int], bool]


def scripted(verdicts: Verdicts, calls: list[tuple[str, float]]) -> Trial:
    """A trial that sustains (system, rate, n-th trial of that step) when `verdicts` says so."""
    seen: dict[tuple[str, float], int] = {}

    async def trial(s: Server, rate: float) -> CollabRun:
        n = seen.get((s.system, rate), 0)
        seen[(s.system, rate)] = n + 1
        calls.append((s.system, rate))
        held = verdicts(s.system, rate, n)
        return trial_run(s.system, rate, SEARCH_P99_MS / 2 if held else SEARCH_P99_MS * 2)

    return trial


async def test_the_ladder_then_halvings_find_each_servers_rate() -> None:
    capacity = {"redline": 1600.0, "hocuspocus": 10_000.0}
    calls: list[tuple[str, float]] = []
    runs = await search(
        [server("redline"), server("hocuspocus")],
        scripted(lambda system, rate, _: rate <= capacity[system], calls),
    )
    red = sorted({step_rate(r) for r in runs if r.system == "redline"})
    # Kept 1,000 and lost 2,000 on the ladder; then 1,500 kept, 1,750 lost: a gap of 250
    # (SEARCH_RESOLUTION).
    assert red == [500, 1000, 1500, 1750, 2000]
    assert {step_rate(r) for r in runs if r.system == "hocuspocus"} == set(SEARCH_RATES)
    assert max_sustained(runs, "redline") == 1500 * 0.98
    assert max_sustained(runs, "hocuspocus") == SEARCH_RATES[-1] * 0.98
    # Two trials that agree decide a step.
    assert all(n == 2 for n in _per_step(calls).values())
    # The servers' trials alternate while both climb.
    assert calls[:4] == [("redline", 500), ("hocuspocus", 500)] * 2


async def test_one_bad_trial_neither_stops_the_ladder_nor_lifts_the_answer() -> None:
    def verdicts(system: str, rate: float, n: int) -> bool:
        if rate == 2000:
            return n != 0  # a burst fails the first trial of a rate it holds
        if rate == 3000:
            return n == 0  # a lucky first trial at a rate it cannot hold
        return rate < 3000

    calls: list[tuple[str, float]] = []
    runs = await search([server("redline")], scripted(verdicts, calls))
    per = _per_step(calls)
    assert per[("redline", 2000)] == 3 and per[("redline", 3000)] == 3
    steps = sorted({step_rate(r) for r in runs})
    assert steps == [500, 1000, 2000, 2500, 2750, 3000]
    assert max_sustained(runs, "redline") == 2750 * 0.98


def test_a_rate_counts_only_once_decided() -> None:
    held = trial_run("redline", 2000, 5.0)
    failed = trial_run("redline", 2000, 50.0)
    lossy = trial_run("redline", 2000, 5.0, lost=1)
    assert decided([held]) is None
    assert decided([held, failed]) is None
    assert decided([held, failed, held]) is True
    assert decided([held, lossy]) is None, "a lost delivery is not sustained"
    assert decided([failed, lossy]) is False
    # One passing trial alone (a search cut short) is not a kept rate.
    assert max_sustained([trial_run("redline", 500, 5.0)], "redline") == 0.0
    assert max_sustained([], "redline") is None


def test_the_target_compares_the_fastest_rates_kept() -> None:
    report = Report(meta={})
    for rate, p99 in ((500, 5.0), (1000, 5.0), (2000, 50.0)):
        report.collab += [trial_run("redline", rate, p99)] * 2
    for rate, p99 in ((500, 5.0), (1000, 5.0), (2000, 5.0), (3000, 50.0)):
        report.collab += [trial_run("hocuspocus", rate, p99)] * 2
    # A lucky single trial of Redline at 3,000 (undecided) does not count.
    report.collab.append(trial_run("redline", 3000, 5.0))
    opts = parse([])
    (target,) = [t for t in evaluate(report, opts) if "max keys/s" in t.name]
    assert target.value == 0.5
    assert target.passed is False
    assert "other work on the host 1.50 cores" in target.note


def _per_step(calls: list[tuple[str, float]]) -> dict[tuple[str, float], int]:
    out: dict[tuple[str, float], int] = {}
    for call in calls:
        out[call] = out.get(call, 0) + 1
    return out
