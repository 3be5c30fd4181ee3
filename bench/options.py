"""Command-line options of `python -m bench`; `--quick` changes the defaults of flags not given."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from shared.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("redline", "naive", "ceiling")
SCENARIOS = (
    "open",
    "closed",
    "lag",
    "flush",
    "profiles",
    "matcher",
    "events",
    "collab",
    "compaction",
)
COLLAB_SYSTEMS = ("redline", "hocuspocus", "y-websocket")
# The co-editing cells: (documents, editors each, initial document bytes); every shape at 2 KB,
# then the larger documents at the 10 x 10 shape.
COLLAB_CELLS = ((1, 2, 2048), (10, 10, 2048), (100, 2, 2048), (10, 10, 65536), (10, 10, 524288))
OPEN_LOOP = ("open", "lag")  # scenarios driven at a constant rate

# name: (full default, --quick default)
DEFAULTS: dict[str, tuple[float, float]] = {
    "duration": (20.0, 3.0),
    "rate": (1000.0, 1000.0),
    "editors": (100, 100),
    "docs": (100, 100),
    "content_bytes": (2048, 2048),
    "connections": (64, 64),
    "max_open_connections": (256, 256),
    "flush_docs": (20_000, 2_000),
    "flush_reps": (3, 1),
    "open_reps": (3, 1),
    "flush_interval": (30, 1),
    "drain_timeout": (10.0, 5.0),
    "match_calls": (2000, 300),
    "match_pairs": (200, 30),
    "idle_sockets": (2000, 200),
    "events_rate": (500, 500),
    "events_sockets": (200, 200),
    "events_saves": (200, 30),
    "collab_duration": (5.0, 1.5),
    "collab_key_rate": (5.0, 5.0),
    "collab_search_s": (2.0, 1.0),
    "compaction_updates": (3, 3),
}


@dataclass(frozen=True)
class Options:
    duration: float
    rate: float
    editors: int
    docs: int
    content_bytes: int
    connections: int
    max_open_connections: int
    flush_docs: int
    flush_reps: int
    open_reps: int
    flush_interval: int
    drain_timeout: float
    lag_duration: float
    match_calls: int
    match_pairs: int
    idle_sockets: int
    events_rate: float
    events_sockets: int
    events_saves: int
    collab_duration: float
    collab_key_rate: float
    collab_search_s: float
    compaction_updates: int
    match_pools: tuple[int, ...]
    systems: tuple[str, ...]
    collab_systems: tuple[str, ...]
    collab_cells: tuple[tuple[int, int, int], ...]
    collab_search: bool
    collab_trace: bool
    collab_background_nice: int
    scenarios: tuple[str, ...]
    quick: bool
    seed: int
    plot: bool
    results_dir: Path
    data_dir: Path

    @property
    def edits_per_editor_s(self) -> float:
        return self.rate / self.editors

    def duration_of(self, scenario: str) -> float:
        return self.lag_duration if scenario == "lag" else self.duration


def _names(allowed: Sequence[str]) -> type[argparse.Action]:
    class Names(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: object,
            option_string: str | None = None,
        ) -> None:
            names = tuple(n.strip() for n in str(values).split(",") if n.strip())
            unknown = [n for n in names if n not in allowed]
            if unknown or not names:
                parser.error(f"{option_string}: choose from {', '.join(allowed)}")
            setattr(namespace, self.dest, names)

    return Names


def _cells(value: str) -> tuple[tuple[int, int, int], ...]:
    cells = []
    for spec in (c.strip() for c in value.split(",") if c.strip()):
        parts = spec.lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"{spec!r}: want DOCSxEDITORSxBYTES, e.g. 10x10x2048")
        docs, editors, size = (int(p) for p in parts)
        cells.append((docs, editors, size))
    if not cells:
        raise argparse.ArgumentTypeError("no cell given")
    return tuple(cells)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Redline benchmark: Redline vs a write-through peer (naive) and a bare Redis"
        " SET peer (ceiling), open-loop and closed-loop, plus flush lag and flush throughput.",
    )
    add = p.add_argument
    add("--quick", action="store_true", help="a smoke run of a few seconds per scenario")
    add("--duration", type=float, help="seconds per load scenario (20; quick 3)")
    add("--rate", type=float, help="open-loop edits/s over all editors (1000)")
    add("--editors", type=int, help="simulated typists (100)")
    add("--docs", type=int, help="documents; editor i edits document i mod docs (100)")
    add("--content-bytes", type=int, help="content size of each edit (2048)")
    add("--connections", type=int, help="closed-loop concurrent connections (64)")
    add("--max-open-connections", type=int, help="open-loop connection pool cap (256)")
    add("--flush-docs", type=int, help="dirty documents in the flush scenario (20000; quick 2000)")
    add("--flush-reps", type=int, help="repetitions of the flush scenario (3; quick 1)")
    add(
        "--open-reps",
        type=int,
        help="rounds of the open-loop scenario, every system once a round, the order rotated"
        " (3; quick 1)",
    )
    add("--flush-interval", type=int, help="the flusher's cron interval, s (30; quick 1)")
    add("--drain-timeout", type=float, help="s to wait for late responses after a run (10)")
    add(
        "--lag-duration",
        type=float,
        help="s of the flush-lag scenario: Redline alone at --rate for two flush intervals"
        " (2 x flush interval + 5)",
    )
    add("--match-calls", type=int, help="timed find_match calls per pool size (2000; quick 300)")
    add(
        "--match-pairs",
        type=int,
        help="pairs matched across two matcher processes, 0 to skip (200; quick 30)",
    )
    add(
        "--match-pools",
        default="1000,10000,100000",
        help="comma list of pool sizes for find_match latency (1000,10000,100000)",
    )
    add(
        "--idle-sockets",
        type=int,
        help="idle authenticated sockets on one matcher process, 0 to skip (2000; quick 200)",
    )
    add("--events-rate", type=float, help="edits/s of the events scenario (500)")
    add(
        "--events-sockets",
        type=int,
        help="/v1/ws/events sockets, each following one of --docs documents (200)",
    )
    add("--events-saves", type=int, help="sequential saves timed to job.completed (200; quick 30)")
    add(
        "--collab-duration",
        type=float,
        help="s of typing in each co-editing cell, 15 cells with both peers (5; quick 1.5)",
    )
    add("--collab-key-rate", type=float, help="keystrokes/s of each co-editing typist (5)")
    add(
        "--collab-search-s",
        type=float,
        help="s of each step of the co-editing max-rate search (2; quick 1)",
    )
    add(
        "--compaction-updates",
        type=int,
        help="keystrokes in each co-edited document's log per compaction run (3);"
        " --flush-docs documents, --flush-reps runs",
    )
    add("--systems", action=_names(SYSTEMS), default=SYSTEMS, help="comma list (all)")
    add(
        "--collab-systems",
        action=_names(COLLAB_SYSTEMS),
        default=COLLAB_SYSTEMS,
        help="comma list for the collab scenario (all; the peers need bench/node installed)",
    )
    add(
        "--collab-cells",
        type=_cells,
        default=COLLAB_CELLS,
        help="comma list of DOCSxEDITORSxBYTES co-editing cells (all five: 1x2x2048,"
        " 10x10x2048, 100x2x2048, 10x10x65536, 10x10x524288)",
    )
    add(
        "--no-collab-search",
        dest="collab_search",
        action="store_false",
        help="skip the co-editing max-rate search",
    )
    add(
        "--collab-trace",
        action="store_true",
        help="diagnose each Redline co-editing cell: flusher passes, slow-delivery episodes,"
        " Valkey SLOWLOG/LATENCY/commandstats (bench/collab_trace.py; resets Valkey's stats)",
    )
    add(
        "--collab-background-nice",
        type=int,
        default=0,
        help="nice value for Redline's flusher and Postgres in the collab scenario (0: as"
        " started; an experiment: every process shares this host's cores)",
    )
    add("--scenarios", action=_names(SCENARIOS), default=SCENARIOS, help="comma list (all)")
    add("--seed", type=int, default=1, help="seed of the generated content")
    add("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    add("--results-dir", type=Path, default=ROOT / "bench" / "results")
    add("--data-dir", type=Path, default=ROOT / ".data" / "bench", help="wiped at start")
    return p


def parse(argv: Sequence[str] | None = None) -> Options:
    p = parser()
    ns = p.parse_args(argv)
    values: dict[str, float] = {}
    for name, (full, quick) in DEFAULTS.items():
        given = getattr(ns, name)
        values[name] = (quick if ns.quick else full) if given is None else given
    opts = Options(
        duration=float(values["duration"]),
        rate=float(values["rate"]),
        editors=int(values["editors"]),
        docs=int(values["docs"]),
        content_bytes=int(values["content_bytes"]),
        connections=int(values["connections"]),
        max_open_connections=int(values["max_open_connections"]),
        flush_docs=int(values["flush_docs"]),
        flush_reps=int(values["flush_reps"]),
        open_reps=int(values["open_reps"]),
        flush_interval=int(values["flush_interval"]),
        drain_timeout=float(values["drain_timeout"]),
        lag_duration=float(ns.lag_duration or 2 * values["flush_interval"] + 5),
        match_calls=int(values["match_calls"]),
        match_pairs=int(values["match_pairs"]),
        idle_sockets=int(values["idle_sockets"]),
        events_rate=float(values["events_rate"]),
        events_sockets=int(values["events_sockets"]),
        events_saves=int(values["events_saves"]),
        collab_duration=float(values["collab_duration"]),
        collab_key_rate=float(values["collab_key_rate"]),
        collab_search_s=float(values["collab_search_s"]),
        compaction_updates=int(values["compaction_updates"]),
        match_pools=tuple(int(n) for n in str(ns.match_pools).split(",") if n.strip()),
        systems=tuple(ns.systems),
        collab_systems=tuple(ns.collab_systems),
        collab_cells=tuple(ns.collab_cells),
        collab_search=bool(ns.collab_search),
        collab_trace=bool(ns.collab_trace),
        collab_background_nice=int(ns.collab_background_nice),
        scenarios=tuple(ns.scenarios),
        quick=bool(ns.quick),
        seed=int(ns.seed),
        plot=bool(ns.plot),
        results_dir=Path(ns.results_dir).resolve(),
        data_dir=Path(ns.data_dir).resolve(),
    )
    _check(p, opts)
    return opts


def _check(p: argparse.ArgumentParser, o: Options) -> None:
    positive = {
        "--duration": o.duration,
        "--rate": o.rate,
        "--editors": o.editors,
        "--docs": o.docs,
        "--connections": o.connections,
        "--max-open-connections": o.max_open_connections,
        "--flush-docs": o.flush_docs,
        "--flush-reps": o.flush_reps,
        "--open-reps": o.open_reps,
        "--drain-timeout": o.drain_timeout,
        "--lag-duration": o.lag_duration,
        "--collab-duration": o.collab_duration,
        "--collab-key-rate": o.collab_key_rate,
        "--collab-search-s": o.collab_search_s,
        "--compaction-updates": o.compaction_updates,
    }
    for flag, value in positive.items():
        if value <= 0:
            p.error(f"{flag} must be positive")
    if o.match_calls <= 0 or min(o.idle_sockets, o.match_pairs) < 0 or not o.match_pools:
        p.error(
            "--match-calls must be positive, --idle-sockets and --match-pairs >= 0,"
            " --match-pools not empty"
        )
    if max(o.match_pools) > 1_000_000:
        p.error("--match-pools: at most 1,000,000 users in a pool")
    if max(o.duration, o.lag_duration, o.collab_duration) > 600:
        p.error(
            "--duration, --lag-duration and --collab-duration are capped at 600 s:"
            " every run is bounded"
        )
    if not 0 <= o.collab_background_nice <= 19:
        p.error("--collab-background-nice must be between 0 and 19")
    if o.collab_key_rate > 50:
        p.error("--collab-key-rate: at most 50 keystrokes/s a typist")
    if not 16 <= o.content_bytes <= 512 * 1024:
        p.error("--content-bytes must be between 16 and 524288")
    try:
        Settings(flush_interval=o.flush_interval)
    except ValidationError as exc:
        p.error(f"--flush-interval: {exc.errors()[0]['msg']}")
