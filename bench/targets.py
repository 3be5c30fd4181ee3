"""The targets Redline is held to (from the benchmark issue), checked against one report."""

from __future__ import annotations

import statistics

from bench.collab import SEARCH_P99_MS, SEARCH_RATES, SEARCH_SHAPE, SEARCH_TRIALS, max_sustained
from bench.options import Options
from bench.results import CollabRun, LoadRun, Report, Target

THROUGHPUT_VS_CEILING = 0.90  # Redline's max edits/s over the ceiling peer's, one worker each
P99_VS_CEILING = 1.2  # Redline's open-loop p99 over the ceiling peer's
WRITES_PER_EDIT = 0.01  # Postgres row writes per edit, default 30 s flush interval
DIRTY_AGE_SLACK_S = 2.0  # oldest dirty age <= flush_interval + this
FLUSH_DOCS_PER_S = 20_000.0
COMPACTION_VS_BARE = 0.6  # compaction docs/s over the bare write of the same rows
GENERATOR_RATE = 1000.0  # the load generator must sustain this open loop
MATCH_P99_MS = 5.0  # find_match p99 with 10,000 users in one language pool
MATCH_P99_GROWTH = 2.0  # p99 at the largest pool over p99 at the smallest
KB_PER_SOCKET = 40.0  # matcher RSS per idle authenticated socket
SCALE_OUT = 2.0  # two matcher processes hold at least twice one process's sockets...
SCALE_OUT_MEMORY = 1.10  # ...at the same memory a socket (10% for measurement noise)
NOTIFY_P99_MS = 20.0  # match notification to a partner on another matcher process
EVENT_P99_MS = 30.0  # edit -> document.edited on a follower's socket, at the events bench load
SAVE_EVENT_P99_MS = 100.0  # POST save -> job.completed on the socket, idle queue


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _rate(run: LoadRun | None) -> float | None:
    return None if run is None else run.achieved_per_s


def _median_p99(runs: list[LoadRun]) -> float | None:
    p99s = [r.p99_ms for r in runs if r.p99_ms is not None]
    return statistics.median(p99s) if p99s else None


def _open_p99(report: Report, opts: Options) -> Target:
    """Redline's open-loop p99 over the ceiling's: the median of each one's rounds (interleaved,
    the order rotated), since one 20 s p99 on this host moves by 2x from run to run."""
    mine, peer = report.runs_of("open", "redline"), report.runs_of("open", "ceiling")
    rounds = [
        f"{a.p99_ms:.2f}/{b.p99_ms:.2f}"
        for a, b in zip(mine, peer, strict=False)
        if a.p99_ms is not None and b.p99_ms is not None
    ]
    note = f"median of {len(rounds)} rounds; p99 ms redline/ceiling: {', '.join(rounds)}"
    return _check(
        f"redline/ceiling p99 at {opts.rate:.0f}/s (open loop), <=",
        _ratio(_median_p99(mine), _median_p99(peer)),
        P99_VS_CEILING,
        at_least=False,
        note=note if len(rounds) > 1 else "",
    )


def _check(name: str, value: float | None, limit: float, at_least: bool, note: str = "") -> Target:
    passed = None if value is None else (value >= limit if at_least else value <= limit)
    return Target(name, value, limit, passed, note)


def evaluate(report: Report, opts: Options) -> list[Target]:
    out: list[Target] = []
    rl_closed, cap_closed = report.load("closed", "redline"), report.load("closed", "ceiling")
    rl_open = report.load("open", "redline")
    out.append(
        _check(
            "redline/ceiling max edits/s (closed loop), >=",
            _ratio(_rate(rl_closed), _rate(cap_closed)),
            THROUGHPUT_VS_CEILING,
            at_least=True,
        )
    )
    out.append(_open_p99(report, opts))
    # Steady state: the flush-lag run spans two flush intervals; the 20 s runs may see no flush.
    steady = report.load("lag", "redline") or rl_open
    notes = []
    if opts.flush_interval != 30:
        notes.append(f"flush interval {opts.flush_interval}s, not the default 30s")
    if steady is not None:
        notes.append(f"{steady.scenario} run, {steady.duration_s:.0f}s")
        if steady.duration_s < 2 * opts.flush_interval:
            notes.append("fewer than two flush intervals")
    out.append(
        _check(
            "redline pg row writes per edit, <=",
            steady.writes_per_edit if steady else None,
            WRITES_PER_EDIT,
            at_least=False,
            note="; ".join(notes),
        )
    )
    bound = opts.flush_interval + DIRTY_AGE_SLACK_S
    lag_runs = [r for r in report.loads if r.system == "redline" and r.max_dirty_age_s is not None]
    worst = max(lag_runs, key=lambda r: r.max_dirty_age_s or 0.0) if lag_runs else None
    age = _check(
        "redline oldest dirty age s, <=",
        worst.max_dirty_age_s if worst else None,
        bound,
        at_least=False,
        note=f"{worst.scenario} run" if worst else "",
    )
    longest = max((r.duration_s for r in lag_runs), default=0.0)
    if age.passed and longest < bound:
        # A run shorter than the bound cannot show an age above it: no verdict.
        age.passed = None
        age.note = f"runs ({longest:.0f}s) too short to exceed it; run the lag scenario"
    out.append(age)
    rates = [f.docs_per_s for f in report.flushes if f.kind == "text"]
    out.append(
        _check(
            "flush_dirty docs/s (median), >=",
            statistics.median(rates) if rates else None,
            FLUSH_DOCS_PER_S,
            at_least=True,
            note=f"{opts.flush_docs} dirty docs of {opts.content_bytes} B",
        )
    )
    out += _compaction(report, opts)
    opens = [r for r in report.loads if r.scenario == "open"]
    best = max(opens, key=lambda r: r.achieved_per_s) if opens else None
    out.append(
        _check(
            "load generator open-loop req/s (best system), >=",
            best.achieved_per_s if best else None,
            min(GENERATOR_RATE, opts.rate) * 0.99,
            at_least=True,
            note=f"dispatch lag p99 {best.dispatch_lag_p99_ms:.2f} ms ({best.system})"
            if best and best.dispatch_lag_p99_ms is not None
            else "",
        )
    )
    out += _profile_targets(report)
    out += _matcher(report)
    out += _events(report)
    out += _collab(report)
    return out


COLLAB_WIRE_BYTES = 64.0  # wire bytes a keystroke, at every document size
COLLAB_P99_MS = 15.0  # keystroke -> co-editor, at 1,000 keystrokes/s on one api process
COLLAB_RATE = 1000.0
COLLAB_SIZE_COST = 1.5  # CPU a keystroke at 512 KB over at 2 KB
COLLAB_VS_HOCUSPOCUS = 0.8  # max sustainable keystrokes/s over Hocuspocus's


def _collab_cost(run: CollabRun) -> float | None:
    """Redline's server CPU a keystroke: the api process and Valkey."""
    if run.server_cpu_per_1k is None:
        return None
    return run.server_cpu_per_1k + (run.valkey_cpu_per_1k or 0.0)


def _collab(report: Report) -> list[Target]:
    runs = [c for c in report.collab if c.system == "redline" and c.phase == "cells"]
    if not report.collab:
        return []
    wire = max(runs, key=lambda c: c.wire_per_keystroke or 0.0) if runs else None
    busiest = max(runs, key=lambda c: c.keystrokes_per_s) if runs else None
    rate_p99 = _check(
        f"collab keystroke -> co-editor p99 ms at {COLLAB_RATE:,.0f} keys/s, one api, <=",
        busiest.p99_ms if busiest else None,
        COLLAB_P99_MS,
        at_least=False,
        note=f"{busiest.docs}x{busiest.editors} at {busiest.keystrokes_per_s:,.0f} keys/s"
        if busiest
        else "",
    )
    if busiest and busiest.keystrokes_per_s < 0.9 * COLLAB_RATE:
        rate_p99.passed = None
        rate_p99.note += f": below {COLLAB_RATE:,.0f}/s, no verdict"
    worst = max(runs, key=lambda c: c.p99_ms or 0.0) if runs else None
    small = next((c for c in runs if (c.docs, c.editors, c.doc_bytes) == (10, 10, 2048)), None)
    large = next((c for c in runs if (c.docs, c.editors, c.doc_bytes) == (10, 10, 524288)), None)
    converged = [c.converged and c.stored_equal is not False for c in report.collab]
    return [
        _check(
            "collab wire bytes a keystroke a socket (worst redline cell), <=",
            wire.wire_per_keystroke if wire else None,
            COLLAB_WIRE_BYTES,
            at_least=False,
            note=f"{wire.docs}x{wire.editors}, {wire.doc_bytes // 1024} KB" if wire else "",
        ),
        rate_p99,
        _check(
            "collab keystroke -> co-editor p99 ms (worst redline cell), <=",
            worst.p99_ms if worst else None,
            COLLAB_P99_MS,
            at_least=False,
            note=f"{worst.docs}x{worst.editors}, {worst.doc_bytes // 1024} KB,"
            f" {worst.keystrokes_per_s:,.0f} keys/s"
            if worst
            else "",
        ),
        _check(
            "collab redline CPU a keystroke, 512 KB over 2 KB (10x10), <=",
            _ratio(_collab_cost(large), _collab_cost(small)) if large and small else None,
            COLLAB_SIZE_COST,
            at_least=False,
            note="api + Valkey CPU s per 1,000 keystrokes",
        ),
        _check(
            "collab runs converged (and equal to Redline's stored state), fraction >=",
            sum(converged) / len(converged),
            1.0,
            at_least=True,
            note=f"{sum(converged)}/{len(converged)} runs",
        ),
        _max_rate(report),
    ]


def _max_rate(report: Report) -> Target:
    ours = max_sustained(report.collab, "redline")
    theirs = max_sustained(report.collab, "hocuspocus")
    target = _check(
        f"collab redline max keys/s at p99 <= {SEARCH_P99_MS:.0f} ms over hocuspocus's, >=",
        _ratio(ours, theirs),
        COLLAB_VS_HOCUSPOCUS,
        at_least=True,
        note=f"{ours or 0:,.0f} vs {theirs or 0:,.0f} keys/s, {SEARCH_SHAPE[0]}x{SEARCH_SHAPE[1]},"
        f" a rate kept by most of {SEARCH_TRIALS} trials",
    )
    busy = _other_cores(report)
    if busy is not None:
        # On this shared host another process's CPU moves every trial's p99; the trials
        # alternate between the two systems, so it falls on both, but it is said.
        target.note += f"; other work on the host {busy:.2f} cores during the trials"
    if theirs == 0.0:
        target.note += ": hocuspocus sustained no step, no verdict"
    elif ours is not None and theirs is not None:
        top = SEARCH_RATES[-1] * 0.9
        if ours >= top and theirs >= top:
            target.note += ": both reached the last step (the load generator's limit)"
    return target


def _other_cores(report: Report) -> float | None:
    """The mean CPU the rest of the machine used during the search trials, in cores (the
    meter's "other": neither the servers nor the load client)."""
    trials = [c for c in report.collab if c.phase == "search" and c.seconds > 0]
    if not trials:
        return None
    return sum(c.cpu_s.get("other", 0.0) for c in trials) / sum(c.seconds for c in trials)


def _events(report: Report) -> list[Target]:
    e = report.events
    return [
        _check(
            "edit -> document.edited p99 ms, <=",
            e.p99_ms if e else None,
            EVENT_P99_MS,
            at_least=False,
            note=f"{e.edits_per_s:.0f} edits/s, {e.documents} docs, {e.sockets} sockets,"
            f" {e.events_received}/{e.events_expected} events"
            if e
            else "",
        ),
        _check(
            "POST save -> job.completed p99 ms (idle queue), <=",
            e.save_p99_ms if e else None,
            SAVE_EVENT_P99_MS,
            at_least=False,
            note=f"{e.saves} sequential saves" if e and e.saves else "",
        ),
    ]


PROFILE_VS_DOCUMENT = 0.90  # cached profile reads/s over document reads/s
PROFILE_P99_MS = 10.0
ZIPF_HIT_RATE = 0.94
ZIPF_QUERIES_PER_READ = 0.06


def _profile_targets(report: Report) -> list[Target]:
    p = report.profiles
    if not p:
        return []
    hot = p["cached_profile_read"]
    overall = p["zipf_overall"]
    steady = p["zipf"].get("steady", {})
    note = f"x{p['connections']} connections, {p['phase_s']:.0f}s phases"
    return [
        _check(
            "cached profile reads/s over document reads/s, >=",
            p["throughput_vs_document_read"],
            PROFILE_VS_DOCUMENT,
            at_least=True,
            note=note,
        ),
        _check(
            "cached profile read p99 ms (closed loop, saturated), <=",
            hot["p99_ms"],
            PROFILE_P99_MS,
            False,
            note,
        ),
        _check(
            "cached profile read p99 ms (open loop), <=",
            p["cached_profile_open"]["p99_ms"],
            PROFILE_P99_MS,
            False,
            f"{p['cached_profile_open']['rate']:,.0f}/s = half the closed-loop capacity",
        ),
        _check(
            "zipf profile hit rate, steady state (third phase), >=",
            steady.get("hit_rate"),
            ZIPF_HIT_RATE,
            at_least=True,
            note=f"from cold, all phases: {overall['hit_rate'] or 0:.3f} (best possible"
            f" {overall['best_hit_rate'] or 0:.3f})",
        ),
        _check(
            "zipf pg queries per read, steady state (third phase), <=",
            steady.get("pg_queries_per_read"),
            ZIPF_QUERIES_PER_READ,
            at_least=False,
            note=f"from cold, all phases: {overall['pg_queries_per_read'] or 0:.4f}",
        ),
    ]


def _matcher(report: Report) -> list[Target]:
    runs = {m.pooled: m for m in report.match_latency}
    at_10k = runs.get(10_000)
    smallest = min(runs.values(), key=lambda m: m.pooled) if runs else None
    largest = max(runs.values(), key=lambda m: m.pooled) if runs else None
    growth = None
    if smallest and largest and smallest is not largest and smallest.p99_ms and largest.p99_ms:
        growth = largest.p99_ms / smallest.p99_ms
    idle = next((i for i in report.idle_sockets if i.processes == 1), None)
    two = next((i for i in report.idle_sockets if i.processes == 2), None)
    notify = report.match_notify
    return [
        _check(
            "find_match p99 ms, 10,000 pooled, <=",
            at_10k.p99_ms if at_10k else None,
            MATCH_P99_MS,
            at_least=False,
        ),
        _check(
            "find_match p99 growth, largest/smallest pool, <=",
            growth,
            MATCH_P99_GROWTH,
            at_least=False,
            note=f"{smallest.pooled:,} -> {largest.pooled:,}"
            if growth and smallest and largest
            else "",
        ),
        _check(
            "match notification p99 ms, partner on another process, <=",
            notify.p99_ms if notify else None,
            NOTIFY_P99_MS,
            at_least=False,
            note=f"{notify.pairs} pairs, room document included" if notify else "",
        ),
        _check(
            "matcher RSS KB per idle socket, <=",
            idle.kb_per_socket if idle else None,
            KB_PER_SOCKET,
            at_least=False,
            note=f"{idle.connected:,} sockets" if idle else "",
        ),
        _check(
            "two matcher processes: sockets held over one process's, >=",
            two.connected / idle.connected if idle and two and idle.connected else None,
            SCALE_OUT,
            at_least=True,
            note=f"{two.connected:,} vs {idle.connected:,}" if idle and two else "",
        ),
        _check(
            "two matcher processes: KB per socket over one process's, <=",
            two.kb_per_socket / idle.kb_per_socket if idle and two and idle.kb_per_socket else None,
            SCALE_OUT_MEMORY,
            at_least=False,
            note=f"{two.kb_per_socket:.1f} vs {idle.kb_per_socket:.1f} KB" if idle and two else "",
        ),
    ]


def _compaction(report: Report, opts: Options) -> list[Target]:
    """Co-edited documents: the flush folds their logs and trims them (bench/compaction.py)."""
    runs = [f for f in report.flushes if f.kind == "collab"]
    if not runs:
        return []
    note = (
        f"{opts.flush_docs} docs of {opts.content_bytes} B, {opts.compaction_updates} updates each"
    )
    ratios = [f.docs_per_s / f.bare_docs_per_s for f in runs if f.bare_docs_per_s]
    return [
        _check(
            "compaction docs/s (median), >=",
            statistics.median(f.docs_per_s for f in runs),
            FLUSH_DOCS_PER_S,
            at_least=True,
            note=note,
        ),
        _check(
            "compaction / bare COPY + UPDATE of the same rows (median), >=",
            statistics.median(ratios) if ratios else None,
            COMPACTION_VS_BARE,
            at_least=True,
            note="the flusher's own statement alone, same batch size, same run",
        ),
    ]
