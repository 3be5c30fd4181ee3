"""The co-editing scenario (issue 12): D documents x E editors each typing with human gaps into
Redline's `/v1/collab/{id}` and, when Node and `bench/node/node_modules` are there, into the two
in-memory peers Hocuspocus 4.7 and y-websocket 2.1's server, all driven by the same pycrdt
client (bench/collab_client.py) from this one process, on 127.0.0.1.

Per cell (shape x initial document size) and system: keystroke -> every co-editor p50/p99 (from
when it was typed to when each other editor applied it), wire bytes a keystroke a socket, server
CPU seconds per 1,000 keystrokes, and convergence (every editor's final text equal; for Redline
also equal to what its Redis state and update log fold to, which is what the flusher will write).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import statistics
import string
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpx
import psutil

from bench import systems, workload
from bench.collab_client import Editor, Room, Wire, open_editor, state_vector
from bench.collab_trace import Tracer
from bench.meters import CpuMeter, Procs
from bench.options import ROOT, Options
from bench.processes import child_env, say
from bench.results import CollabRun, Report, percentile
from bench.stack import Stack
from deploy.embedded import free_port
from shared.domain import collab
from shared.infra.clients import redis_client
from shared.store.keys import Keys
from shared.store.update_log import UpdateLog, append_options

NODE_DIR = ROOT / "bench" / "node"
PEER_VERSIONS = "@hocuspocus/server 4.7.0, y-websocket 2.1.0"  # bench/node/package.json
PEERS = {
    "hocuspocus": NODE_DIR / "hocuspocus-server.mjs",
    "y-websocket": NODE_DIR / "node_modules" / "y-websocket" / "bin" / "server.cjs",
}
# The max-rate search: 100 documents x 2 editors, total keystrokes/s per step: the ladder, then
# halvings of the gap between the last rate kept and the first lost, down to SEARCH_RESOLUTION.
SEARCH_SHAPE = (100, 2)
SEARCH_RATES = (500, 1000, 2000, 3000, 4000)
SEARCH_RESOLUTION = 250
SEARCH_P99_MS = 15.0
# Trials a step (a majority decides; two that agree end it): one short step's p99 is the 40th
# worst of ~4,000 deliveries, and one other process's burst on this shared host moves it past the
# limit (the same build passed 4,000/s one day and failed 2,000/s the next).
SEARCH_TRIALS = 3
USERS = 10  # accounts on Redline: editor i of every document is user i
KEYS = string.ascii_lowercase + "    "
JOINING = 16  # sockets opening at once
SETTLE_S = 10.0  # longest wait for the last deliveries after typing stops


async def _nothing() -> None:
    return None


@dataclass
class Server:
    system: str
    base: str  # ws://host:port
    cpu: dict[str, Procs]
    tokens: list[str]
    # The initial contents -> the documents' names, created (Redline) or only named (peers:
    # the first editor brings the content).
    documents: Callable[[list[str]], Awaitable[list[str]]]
    stored: Callable[[str], Awaitable[str]] | None = None  # Redline: the folded Redis text
    close: Callable[[], Awaitable[None]] = _nothing
    trace: Tracer | None = None  # --collab-trace (Redline)

    @property
    def seeds_itself(self) -> bool:
        return self.system == "redline"


def peers_installed() -> str | None:
    """Why the Node peers cannot run, or None when they can."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    missing = [p.name for p in PEERS.values() if not p.exists()]
    if missing or not (NODE_DIR / "node_modules" / "@hocuspocus" / "server").exists():
        return "bench/node/node_modules is not installed (make bench runs npm ci there)"
    return None


def human_gap(rng: random.Random, mean_s: float) -> float:
    """Seconds to the next keystroke: mostly lognormal around the mean, one in twenty a pause
    five times as long (the mean stays `mean_s`)."""
    if rng.random() < 0.05:
        return mean_s * 5 * rng.uniform(0.5, 1.5)
    return mean_s * 0.8 * rng.lognormvariate(-0.125, 0.5)


async def _typist(ed: Editor, end: float, rng: random.Random, mean_s: float) -> None:
    ed.cursor = rng.randrange(len(ed.text) + 1)
    await asyncio.sleep(rng.uniform(0, mean_s))
    while True:
        gap = human_gap(rng, mean_s)
        if time.perf_counter() + gap > end:
            return
        await asyncio.sleep(gap)
        if rng.random() < 0.02:  # the caret moves elsewhere now and then
            ed.cursor = rng.randrange(len(ed.text) + 1)
        await ed.type(rng.choice(KEYS))


JOIN_S = 120.0
CONVERGE_S = 10.0


async def _joined(editors: list[Editor], size: int) -> None:
    """Until every editor is synced and holds the initial content."""
    deadline = time.perf_counter() + JOIN_S
    for ed in editors:
        while not (ed.synced.is_set() and len(ed.text) >= size):
            if ed.error is not None:
                raise ed.error
            if time.perf_counter() > deadline:
                raise TimeoutError(f"an editor never synced ({len(ed.text)} of {size} bytes)")
            await asyncio.sleep(0.01)


def _expected(rooms: list[Room]) -> int:
    return sum(len(ed.typed) * (len(r.editors) - 1) for r in rooms for ed in r.editors)


def _delivered(rooms: list[Room]) -> int:
    return sum(len(r.latencies_ms) for r in rooms)


def _same(vectors: Iterable[dict[int, int]]) -> bool:
    first, *rest = vectors
    return all(v == first for v in rest)


async def _converged(rooms: list[Room]) -> bool:
    deadline = time.perf_counter() + CONVERGE_S
    while True:
        # Compared decoded: the encoding's client order differs from one document to another.
        if all(_same(state_vector(ed.doc.get_state()) for ed in r.editors) for r in rooms):
            return all(len({str(ed.text) for ed in r.editors}) == 1 for r in rooms)
        if time.perf_counter() > deadline:
            return False
        await asyncio.sleep(0.05)


@dataclass(frozen=True)
class Load:
    docs: int
    editors: int  # each document's
    size: int  # initial document bytes
    seconds: float  # of typing
    key_rate: float  # keystrokes/s of each typist
    phase: str = "cells"  # or "search": a step of the max-rate search


async def cell(server: Server, load: Load, rng: random.Random) -> CollabRun:
    docs, editors, size = load.docs, load.editors, load.size
    contents = workload.content(rng, docs, size)
    names = await server.documents(contents)
    wire = Wire()
    rooms = [Room() for _ in names]
    started = time.perf_counter()
    base, tokens, system = server.base, server.tokens, server.system

    def seed(j: int) -> bytes | None:
        return None if server.seeds_itself else collab.seed_update(contents[j])

    firsts = [
        open_editor(system, base, n, tokens[0], wire, rooms[j], seed(j))
        for j, n in enumerate(names)
    ]
    everyone = await workload.bounded(firsts, JOINING)
    await _joined(everyone, size)
    rest = [
        open_editor(system, base, n, tokens[i % len(tokens)], wire, rooms[j])
        for j, n in enumerate(names)
        for i in range(1, editors)
    ]
    everyone += await workload.bounded(rest, JOINING)
    try:
        await _joined(everyone, size)
        join_s = time.perf_counter() - started
        meter = CpuMeter({**server.cpu, "loadgen": lambda: [psutil.Process()]})
        meter.start()
        if server.trace is not None:
            await server.trace.start()
        wire.counting = True
        t0 = time.perf_counter()
        end = t0 + load.seconds
        mean_s = 1 / load.key_rate
        await asyncio.gather(
            *(_typist(ed, end, random.Random(rng.random()), mean_s) for ed in everyone)
        )
        typed_s = time.perf_counter() - t0
        settle = time.perf_counter() + SETTLE_S
        while _delivered(rooms) < _expected(rooms) and time.perf_counter() < settle:
            if any(ed.error for ed in everyone):
                break
            await asyncio.sleep(0.02)
        cpu_s = meter.stop()
        wire.counting = False
        if server.trace is not None:
            await server.trace.report(rooms, f"{system} {docs}x{editors} {size // 1024} KB")
        converged = await _converged(rooms)
        stored = None
        if server.stored is not None:
            texts = [await server.stored(n) for n in names]
            stored = all(t == str(r.editors[0].text) for t, r in zip(texts, rooms, strict=True))
        errors = sorted({repr(ed.error) for ed in everyone if ed.error is not None})
        lengths_ok = all(
            len(ed.text) == size + sum(len(e.typed) for e in r.editors)
            for r in rooms
            for ed in r.editors
        )
    finally:
        await asyncio.gather(*(ed.close() for ed in everyone))
    keystrokes = sum(len(ed.typed) for ed in everyone)
    ordered = sorted(x for r in rooms for x in r.latencies_ms)
    per_1k = 1000 / keystrokes if keystrokes else math.nan
    wire_bytes = wire.sent + wire.received
    run = CollabRun(
        system=system,
        phase=load.phase,
        key_rate=load.key_rate,
        loadavg=os.getloadavg()[0],
        docs=docs,
        editors=editors,
        doc_bytes=size,
        seconds=typed_s,
        join_s=join_s,
        keystrokes=keystrokes,
        keystrokes_per_s=keystrokes / typed_s if typed_s else 0.0,
        deliveries=len(ordered),
        expected=_expected(rooms),
        p50_ms=percentile(ordered, 50),
        p99_ms=percentile(ordered, 99),
        max_ms=ordered[-1] if ordered else None,
        wire_sent=wire.sent,
        wire_received=wire.received,
        wire_per_keystroke=wire_bytes / keystrokes / editors if keystrokes else None,
        cpu_s=cpu_s,
        server_cpu_per_1k=cpu_s.get("server", 0.0) * per_1k if keystrokes else None,
        valkey_cpu_per_1k=cpu_s["valkey"] * per_1k if keystrokes and "valkey" in cpu_s else None,
        converged=converged and lengths_ok and not errors,
        stored_equal=stored,
        errors=errors,
    )
    say(
        f"collab {system} {docs}x{editors} {size // 1024} KB: {keystrokes} keystrokes"
        f" ({run.keystrokes_per_s:.0f}/s), p50 {run.p50_ms or 0:.2f} ms p99 {run.p99_ms or 0:.2f}"
        f" ms, {run.deliveries}/{run.expected} delivered,"
        f" {run.wire_per_keystroke or 0:.1f} B/keystroke/socket,"
        f" converged {run.converged}, stored {stored}, joined in {join_s:.1f}s"
        + (f"; errors {errors}" if errors else "")
    )
    return run


# Systems --------------------------------------------------------------------------------------
async def _redline(stack: Stack, opts: Options) -> Server:
    extra: dict[str, str | int] = {
        "REDLINE_COLLAB_ENABLED": "true",
        "REDLINE_COLLAB_UPDATE_RATE": 1000,  # the bench measures the path, not the limit
        # The flusher folds logs every flush_interval; caps this high keep the bench measuring
        # the keystroke path, never the backpressure.
        "REDLINE_COLLAB_LOG_MAX_ENTRIES": 10_000_000,
        "REDLINE_COLLAB_LOG_MAX_BYTES": 1 << 30,
    }
    running = await asyncio.to_thread(systems.start, stack, "redline", opts.flush_interval, extra)
    if opts.collab_background_nice:
        background = [*stack.child_procs("flusher"), *stack.postgres_procs()]
        _renice(background, opts.collab_background_nice)
    work = await workload.create(
        running.port, USERS, 0, 16, random.Random(opts.seed), name="typist"
    )
    settings = systems.redline_settings(stack, opts.flush_interval)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    state = redis_client(settings.state_url, binary=True)
    log = UpdateLog(state, keys, append_options(settings))

    async def documents(contents: list[str]) -> list[str]:
        base = f"http://127.0.0.1:{running.port}"
        async with httpx.AsyncClient(base_url=base, timeout=60, trust_env=False) as client:
            return await workload.documents(client, work.tokens[0], contents)

    async def stored(doc_id: str) -> str:
        snap = await log.read(doc_id, 100_000_000)
        return collab.fold(snap.state, [u for _, u in snap.log]).text

    trace = None
    if opts.collab_trace:
        trace = Tracer(redis_client(stack.redis_url), stack.children.log_dir / "flusher.log")

    async def close() -> None:
        await state.aclose()
        if trace is not None:
            await trace.valkey.aclose()

    return Server(
        "redline",
        f"ws://127.0.0.1:{running.port}",
        {
            "server": lambda: stack.child_procs("api"),
            "flusher": lambda: stack.child_procs("flusher"),
            "valkey": stack.valkey_procs,
            "postgres": stack.postgres_procs,
        },
        work.tokens,
        documents,
        stored,
        close,
        trace,
    )


def _renice(procs: list[psutil.Process], nice: int) -> None:
    """The write-behind side (the flusher and Postgres, whose backends fork from the postmaster
    and inherit its nice value) below the keystroke path (api, Valkey, the load client): on
    this one shared host a flush pass of large documents otherwise competes with it for CPU."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.nice(nice)
    say(f"redline: flusher and Postgres reniced to {nice} ({len(procs)} processes)")


async def _peer(stack: Stack, system: str) -> Server:
    port = free_port()
    node = shutil.which("node") or "node"
    env = child_env(HOST="127.0.0.1", PORT=port)
    stack.children.spawn(system, [str(PEERS[system])], env, program=node)
    await asyncio.to_thread(stack.children.wait_http, system, port, "/")

    async def documents(contents: list[str]) -> list[str]:
        return [str(uuid.uuid4()) for _ in contents]

    return Server(
        system,
        f"ws://127.0.0.1:{port}",
        {"server": lambda: stack.child_procs(system)},
        ["bench-token"],
        documents,
    )


async def run(stack: Stack, opts: Options, report: Report) -> None:
    """Every cell against Redline, then against each peer, into `report` as they finish; then
    the max-rate search of Redline and Hocuspocus, their trials alternating (both servers up),
    so that whatever else this host runs meanwhile falls on both."""
    missing = peers_installed()
    names = [n for n in opts.collab_systems if n == "redline" or not missing]
    note = f"peers not run: {missing}" if missing else f"peers: {PEER_VERSIONS}"
    report.meta["collab_peers"] = note
    say(f"collab: {', '.join(names)}; {note}")
    kept: list[Server] = []
    try:
        for system in names:
            server = await (_redline(stack, opts) if system == "redline" else _peer(stack, system))
            # The target compares Redline with Hocuspocus: those two stay up for the search.
            keep = opts.collab_search and system != "y-websocket"
            try:
                for docs, editors, size in opts.collab_cells:
                    load = Load(docs, editors, size, opts.collab_duration, opts.collab_key_rate)
                    report.collab.append(await cell(server, load, _rng(opts, load)))
            finally:
                if keep:
                    kept.append(server)
                else:
                    await server.close()
                    await asyncio.to_thread(_stop, stack, system)
        if kept:
            report.collab += await search(kept, lambda s, rate: _step(s, opts, rate))
    finally:
        for server in kept:
            await server.close()
        await asyncio.to_thread(stack.children.stop_all)


def _stop(stack: Stack, system: str) -> None:
    for name in ("api", "flusher") if system == "redline" else (system,):
        stack.children.stop(name, timeout=10)


def _rng(opts: Options, load: Load) -> random.Random:
    """The same contents and typing for every system."""
    return random.Random(f"{opts.seed}:{load}")


async def _step(server: Server, opts: Options, total: float) -> CollabRun:
    docs, editors = SEARCH_SHAPE
    load = Load(docs, editors, 2048, opts.collab_search_s, total / (docs * editors), "search")
    return await cell(server, load, _rng(opts, load))


Trial = Callable[[Server, float], Awaitable[CollabRun]]


async def search(servers: list[Server], trial: Trial) -> list[CollabRun]:
    """Max sustainable keystrokes/s of each server: SEARCH_SHAPE typing at each rate of the
    ladder until a rate is lost, then at the middle of the gap between the last rate kept and
    the first lost until it is under SEARCH_RESOLUTION. A rate is kept when most of its trials
    sustain it (`decided`); the servers' trials alternate. Every trial is returned (phase
    "search"); `max_sustained` reads the answer from them."""
    runs: list[CollabRun] = []
    kept: dict[str, float] = {s.system: 0.0 for s in servers}
    lost: dict[str, float | None] = {s.system: None for s in servers}
    ladder = iter(SEARCH_RATES)
    climbing = list(servers)
    while climbing:
        rate = next(ladder, None)
        if rate is None:
            break
        steps = [(s, float(rate)) for s in climbing]
        for server, held in zip(climbing, await _trials(steps, trial, runs), strict=True):
            if held:
                kept[server.system] = rate
            else:
                lost[server.system] = rate
        climbing = [s for s in climbing if lost[s.system] is None]
    while True:
        # The servers whose gap is still wide, each at its own middle rate.
        narrowing = [
            (s, _middle(kept[s.system], gone))
            for s in servers
            if (gone := lost[s.system]) is not None and gone - kept[s.system] > SEARCH_RESOLUTION
        ]
        if not narrowing:
            return runs
        for (server, middle), held in zip(
            narrowing, await _trials(narrowing, trial, runs), strict=True
        ):
            if held:
                kept[server.system] = middle
            else:
                lost[server.system] = middle


def _middle(low: float, high: float) -> float:
    """Halfway, rounded to SEARCH_RESOLUTION / 2 (steps stay round numbers)."""
    grain = SEARCH_RESOLUTION / 2
    return max(low + grain, min(high - grain, round((low + high) / 2 / grain) * grain))


async def _trials(
    steps: list[tuple[Server, float]], trial: Trial, runs: list[CollabRun]
) -> list[bool]:
    """Whether each (server, rate) holds, by majority of up to SEARCH_TRIALS trials, one trial of
    each undecided step in turn."""
    results: list[list[CollabRun]] = [[] for _ in steps]
    while True:
        undecided = [i for i, r in enumerate(results) if decided(r) is None]
        if not undecided:
            return [bool(decided(r)) for r in results]
        for i in undecided:
            server, rate = steps[i]
            run = await trial(server, rate)
            results[i].append(run)
            runs.append(run)


def decided(trials: list[CollabRun]) -> bool | None:
    """A step's verdict from its trials so far: kept when most of SEARCH_TRIALS sustain it, lost
    when most cannot, None while undecided."""
    held = sum(sustained(t) for t in trials)
    need = SEARCH_TRIALS // 2 + 1
    if held >= need:
        return True
    if len(trials) - held >= need:
        return False
    return None


def sustained(run: CollabRun) -> bool:
    return run.p99_ms is not None and run.p99_ms <= SEARCH_P99_MS and run.deliveries == run.expected


def step_rate(run: CollabRun) -> float:
    """The rate a search trial was asked for, keystrokes/s over all typists."""
    return round(run.key_rate * run.docs * run.editors, 3)


def max_sustained(runs: list[CollabRun], system: str) -> float | None:
    """The keystrokes/s achieved (median of its trials) at the fastest rate `system`'s search
    kept, 0 when it kept none; None when it was not searched. A rate whose trials do not reach
    a majority either way (fewer than SEARCH_TRIALS run) counts as not kept."""
    steps: dict[float, list[CollabRun]] = {}
    for run in runs:
        if run.phase == "search" and run.system == system:
            steps.setdefault(step_rate(run), []).append(run)
    if not steps:
        return None
    kept = [rate for rate, trials in steps.items() if decided(trials)]
    if not kept:
        return 0.0
    return statistics.median(t.keystrokes_per_s for t in steps[max(kept)])
