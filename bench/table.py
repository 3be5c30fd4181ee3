"""Plain-text tables for stdout."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results import LoadRun, Report

CPU_GROUPS = ("server", "flusher", "redis", "postgres", "loadgen", "other")


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def loads(report: Report) -> str:
    headers = (
        "scenario",
        "system",
        "rate",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "pg writes",
        "edits/write",
        "max dirty age s",
        "pg cpu s",
    )
    rows = []
    for r in report.loads:
        rate = f"{r.target_rate:,.0f}/s" if r.target_rate else f"max x{r.connections}"
        if r.edits_per_write is not None:
            per_write = _f(r.edits_per_write)
        else:
            per_write = "no writes" if r.system == "redline" else "-"
        rows.append(
            (
                _scenario(report, r),
                r.system,
                rate,
                _f(r.achieved_per_s),
                _f(r.p50_ms, 2),
                _f(r.p99_ms, 2),
                str(r.error_count),
                f"{r.pg_row_writes:,}",
                per_write,
                _f(r.max_dirty_age_s),
                _f(r.pg_cpu_s, 2),
            )
        )
    return render(headers, rows)


def _scenario(report: Report, run: LoadRun) -> str:
    """The scenario, with the round when it ran more than once ("open 2")."""
    several = len(report.runs_of(run.scenario, run.system)) > 1
    return f"{run.scenario} {run.rep + 1}" if several else run.scenario


def cpu(report: Report) -> str:
    headers = ("scenario", "system", *(f"{g} cpu s" for g in CPU_GROUPS), "conns", "lag p99 ms")
    rows = [
        (
            _scenario(report, r),
            r.system,
            *(_f(r.cpu_s.get(g), 2) for g in CPU_GROUPS),
            str(r.connections),
            _f(r.dispatch_lag_p99_ms, 2),
        )
        for r in report.loads
    ]
    return render(headers, rows)


def flushes(report: Report) -> str:
    headers = (
        "run",
        "kind",
        "docs",
        "seconds",
        "docs/s",
        "bare rows/s",
        "batches",
        "rows written",
        "pg cpu s",
    )
    rows = [
        (
            str(i + 1),
            f.kind,
            f"{f.docs:,}",
            _f(f.seconds, 3),
            _f(f.docs_per_s, 0),
            _f(f.bare_docs_per_s, 0),
            str(f.batches),
            f"{f.written:,}",
            _f(f.cpu_s.get("postgres"), 2),
        )
        for i, f in enumerate(report.flushes)
    ]
    return render(headers, rows)


def profile_reads(report: Report) -> str:
    p = report.profiles or {}
    headers = (
        "phase",
        "reads/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "hit rate",
        "pg queries/read",
        "pg queries",
        "first reads",
    )
    rows = []
    phases = [
        ("document read", p.get("document_read")),
        ("cached profile", p.get("cached_profile_read")),
    ]
    if p.get("cached_profile_open"):
        phases.append(
            (f"cached, {p['cached_profile_open']['rate']:,.0f}/s open", p["cached_profile_open"])
        )
    phases += [(f"zipf {k}", v) for k, v in p.get("zipf", {}).items()]
    for name, ph in phases:
        if not ph:
            continue
        rows.append(
            (
                name,
                _f(ph["reads_per_s"]),
                _f(ph["p50_ms"], 2),
                _f(ph["p99_ms"], 2),
                str(sum(ph["errors"].values())),
                _f(ph.get("hit_rate"), 3),
                _f(ph.get("pg_queries_per_read"), 4),
                str(ph.get("pg_queries", "-")),
                str(ph.get("first_reads", "-")),
            )
        )
    return render(headers, rows)


def matcher(report: Report) -> str:
    headers = (
        "pooled users",
        "calls",
        "matched",
        "p50 ms",
        "p99 ms",
        "max ms",
        "valkey us/call",
        "valkey p99 ms",
    )
    rows = [
        (
            f"{m.pooled:,}",
            str(m.calls),
            str(m.matched),
            _f(m.p50_ms, 3),
            _f(m.p99_ms, 3),
            _f(m.max_ms, 3),
            _f(m.server_us_per_call, 0),
            _f(m.server_p99_ms, 3),
        )
        for m in report.match_latency
    ]
    return render(headers, rows)


def notify(report: Report) -> str:
    n = report.match_notify
    assert n is not None
    headers = (
        "pairs",
        "partner p50 ms",
        "partner p99 ms",
        "max ms",
        "seeker p50 ms",
        "seeker p99 ms",
    )
    row = (
        str(n.pairs),
        _f(n.p50_ms, 2),
        _f(n.p99_ms, 2),
        _f(n.max_ms, 2),
        _f(n.seeker_p50_ms, 2),
        _f(n.seeker_p99_ms, 2),
    )
    return render(headers, [row])


def events(report: Report) -> str:
    e = report.events
    assert e is not None
    headers = (
        "edits/s",
        "docs",
        "sockets",
        "events",
        "edited p50 ms",
        "edited p99 ms",
        "max ms",
        "matcher cpu s",
        "saves",
        "job p50 ms",
        "job p99 ms",
    )
    row = (
        f"{e.edits_per_s:,.0f}",
        str(e.documents),
        str(e.sockets),
        f"{e.events_received}/{e.events_expected}",
        _f(e.p50_ms, 2),
        _f(e.p99_ms, 2),
        _f(e.max_ms, 2),
        _f(e.matcher_cpu_s, 1),
        str(e.saves),
        _f(e.save_p50_ms, 2),
        _f(e.save_p99_ms, 2),
    )
    return render(headers, [row])


def idle(report: Report) -> str:
    headers = (
        "processes",
        "sockets",
        "connected",
        "connects/s",
        "rss base MB",
        "rss MB",
        "KB/socket",
        "broadcast ms",
        "errors",
    )
    rows = [
        (
            str(i.processes),
            f"{i.sockets:,}",
            f"{i.connected:,}",
            _f(i.connects_per_s, 0),
            _f(i.rss_base_mb),
            _f(i.rss_mb),
            _f(i.kb_per_socket),
            _f(i.broadcast_ms),
            str(sum(i.errors.values())),
        )
        for i in report.idle_sockets
    ]
    return render(headers, rows)


def collab(report: Report) -> str:
    headers = (
        "system",
        "docs x editors",
        "doc KB",
        "keys/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "delivered",
        "B/key/socket",
        "server cpu s/1k",
        "valkey cpu s/1k",
        "loadgen cpu s",
        "other cpu s",
        "load avg",
        "converged",
    )
    rows = [
        (
            c.system,
            f"{c.docs}x{c.editors}",
            f"{c.doc_bytes // 1024:,}",
            _f(c.keystrokes_per_s, 0),
            _f(c.p50_ms, 2),
            _f(c.p99_ms, 2),
            _f(c.max_ms, 1),
            f"{c.deliveries}/{c.expected}",
            _f(c.wire_per_keystroke),
            _f(c.server_cpu_per_1k, 3),
            _f(c.valkey_cpu_per_1k, 3),
            _f(c.cpu_s.get("loadgen"), 1),
            _f(c.cpu_s.get("other"), 1),
            _f(c.loadavg),
            ("yes" if c.converged else "NO")
            + {None: "", True: ", = stored", False: ", != STORED"}[c.stored_equal],
        )
        for c in report.collab
        if c.phase == "cells"
    ]
    return render(headers, rows)


def collab_search(report: Report) -> str:
    headers = (
        "system",
        "docs x editors",
        "target keys/s",
        "achieved/s",
        "p50 ms",
        "p99 ms",
        "delivered",
        "server cpu s/1k",
        "loadgen cpu s",
        "load avg",
    )
    rows = [
        (
            c.system,
            f"{c.docs}x{c.editors}",
            f"{c.key_rate * c.docs * c.editors:,.0f}",
            _f(c.keystrokes_per_s, 0),
            _f(c.p50_ms, 2),
            _f(c.p99_ms, 2),
            f"{c.deliveries}/{c.expected}",
            _f(c.server_cpu_per_1k, 3),
            _f(c.cpu_s.get("loadgen"), 1),
            _f(c.loadavg),
        )
        for c in report.collab
        if c.phase == "search"
    ]
    return render(headers, rows)


def targets(report: Report) -> str:
    headers = ("target", "measured", "limit", "result", "note")
    rows = [
        (
            t.name,
            _f(t.value, 3),
            _f(t.limit, 3),
            {True: "PASS", False: "FAIL", None: "n/a"}[t.passed],
            t.note,
        )
        for t in report.targets
    ]
    return render(headers, rows)


def everything(report: Report) -> str:
    parts = []
    if report.loads:
        parts += ["Edit load (latency from scheduled send time in the open loop)", loads(report)]
        parts += ["", "CPU seconds during each run, by process group", cpu(report)]
    if report.flushes:
        parts += [
            "",
            "Flush throughput: one Flusher.flush_dirty() over the dirty backlog"
            " (collab: co-edited documents, folded and trimmed)",
        ]
        parts += [flushes(report)]
    if report.profiles:
        p = report.profiles
        parts += [
            "",
            f"Profile reads: closed loop x{p['connections']}, {p['phase_s']:.0f}s per phase;"
            f" Zipf s={p['zipf_s']} over {p['users']:,} users from a cold cache",
            profile_reads(report),
        ]

    if report.match_latency:
        parts += ["", "find_match script latency (one round trip, one language pool)"]
        parts += [matcher(report)]
    if report.match_notify is not None:
        parts += ["", "Match across two matcher processes: find_match to each side's match_found"]
        parts += [notify(report)]
    if report.idle_sockets:
        parts += [
            "",
            "Idle authenticated sockets: one matcher process, then two (KB/socket: worst process)",
            idle(report),
        ]
    if report.events is not None:
        parts += ["", "Live events on /v1/ws/events (one matcher process)", events(report)]
    if report.collab:
        parts += [
            "",
            "Co-editing: keystroke -> every co-editor applied it; B/key/socket = bytes on all"
            " sockets (both ways, frame headers included) / keystrokes / editors a document;"
            f" {report.meta.get('collab_peers', '')}",
            collab(report),
        ]
        if any(c.phase == "search" for c in report.collab):
            parts += ["", "Co-editing max-rate search (faster typing each step)"]
            parts += [collab_search(report)]
    if report.targets:
        parts += ["", "Targets", targets(report)]
    return "\n".join(parts)
