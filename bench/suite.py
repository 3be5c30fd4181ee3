"""The whole run: servers, setup, each load scenario against each system (bench/scenario.py),
the flush scenario (bench/backlog.py). Every process started is stopped on the way out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import traceback
from collections.abc import Coroutine, Iterator
from dataclasses import asdict
from typing import Any, TypeVar

import asyncpg

from bench import backlog, collab, compaction, events, matcher, profiles, systems, workload
from bench.options import ROOT, Options
from bench.peers import NAIVE_FILL
from bench.processes import say
from bench.results import Report, run_meta
from bench.scenario import measure
from bench.stack import Stack
from bench.targets import evaluate

try:
    import uvloop
except ImportError:  # pragma: no cover - uvicorn[standard] brings it on Linux and macOS
    uvloop = None  # type: ignore[assignment]

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T], fast: bool = True) -> T:
    """Run one phase in an event loop of its own: uvloop for the load generator (as uvicorn uses
    for the servers), the default loop where we mimic the flusher (arq runs on it)."""
    factory = uvloop.new_event_loop if fast and uvloop is not None else None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C would leave servers running."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def meta(opts: Options) -> dict[str, Any]:
    options = {
        k: str(v) if not isinstance(v, int | float | tuple) else v for k, v in asdict(opts).items()
    }
    return {
        **run_meta(ROOT),
        "options": options,
        "note": "open-loop latency is measured from each request's scheduled send time",
    }


async def setup(stack: Stack, opts: Options) -> workload.Workload:
    say(f"setup: {opts.editors} editors, {opts.docs} documents of {opts.content_bytes} B")
    await stack.prepare()
    running = await asyncio.to_thread(systems.start, stack, "redline", opts.flush_interval)
    try:
        started = time.perf_counter()
        work = await workload.create(
            running.port, opts.editors, opts.docs, opts.content_bytes, random.Random(opts.seed)
        )
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute(NAIVE_FILL)
        finally:
            await conn.close()
        say(f"setup: done in {time.perf_counter() - started:.1f}s")
    finally:
        await asyncio.to_thread(stack.children.stop_all)
    return work


def load_runs(opts: Options) -> list[tuple[str, str, int]]:
    """The HTTP load runs in order: (scenario, system, round). The open loop runs
    `opts.open_reps` rounds, every system once a round, each round starting one system later:
    a 20 s p99 on the 2-core host moves by 2x from one run to the next, so its target compares
    medians of interleaved runs, and no system always runs first or last. The flush-lag scenario
    is about Redline's flusher alone."""
    runs: list[tuple[str, str, int]] = []
    systems = list(opts.systems)
    for scenario in ("open", "closed", "lag"):
        if scenario not in opts.scenarios:
            continue
        if scenario == "lag":
            runs += [(scenario, "redline", 0)] if "redline" in systems else []
            continue
        for rep in range(opts.open_reps if scenario == "open" else 1):
            shift = rep % len(systems)
            runs += [(scenario, system, rep) for system in systems[shift:] + systems[:shift]]
    return runs


def run(opts: Options) -> tuple[Report, list[str]]:
    """Every requested scenario; the report and the failures (scenario crashes) met."""
    report = Report(meta=meta(opts))
    failures: list[str] = []
    stack = Stack(opts.data_dir)
    try:
        stack.start()
        runs = load_runs(opts)
        if runs:
            work = run_async(setup(stack, opts))
            for scenario, system, rep in runs:
                try:
                    run = run_async(measure(stack, system, scenario, opts, work))
                    run.rep = rep
                    report.loads.append(run)
                except Exception as exc:  # one broken scenario must not hide the others
                    failures.append(f"{scenario} {system}: {exc!r}")
                    say(f"{scenario} {system} FAILED:\n{traceback.format_exc()}")
        else:
            run_async(stack.prepare())
        if "profiles" in opts.scenarios:
            try:
                report.profiles = run_async(profiles.run(stack, opts))
            except Exception as exc:
                failures.append(f"profiles: {exc!r}")
                say(f"profiles FAILED:\n{traceback.format_exc()}")
        if "flush" in opts.scenarios:
            report.flushes = run_async(
                backlog.run(
                    stack,
                    opts.flush_docs,
                    opts.flush_reps,
                    opts.content_bytes,
                    opts.flush_interval,
                    opts.seed,
                ),
                fast=False,
            )
        if "compaction" in opts.scenarios:
            try:
                report.flushes += run_async(
                    compaction.run(
                        stack,
                        opts.flush_docs,
                        opts.flush_reps,
                        opts.content_bytes,
                        opts.compaction_updates,
                        opts.flush_interval,
                        opts.seed,
                    ),
                    fast=False,
                )
            except Exception as exc:
                failures.append(f"compaction: {exc!r}")
                say(f"compaction FAILED:\n{traceback.format_exc()}")
        if "matcher" in opts.scenarios:
            try:
                report.match_latency, report.match_notify, report.idle_sockets = run_async(
                    matcher.run(
                        stack,
                        list(opts.match_pools),
                        opts.match_calls,
                        opts.match_pairs,
                        opts.idle_sockets,
                        opts.seed,
                    )
                )
            except Exception as exc:
                failures.append(f"matcher: {exc!r}")
                say(f"matcher FAILED:\n{traceback.format_exc()}")
        if "events" in opts.scenarios:
            try:
                report.events = run_async(
                    events.run(
                        stack,
                        opts.events_rate,
                        opts.docs,
                        opts.events_sockets,
                        opts.events_saves,
                        opts.duration,
                    )
                )
            except Exception as exc:
                failures.append(f"events: {exc!r}")
                say(f"events FAILED:\n{traceback.format_exc()}")
        if "collab" in opts.scenarios:
            try:
                run_async(collab.run(stack, opts, report))
            except Exception as exc:
                failures.append(f"collab: {exc!r}")
                say(f"collab FAILED:\n{traceback.format_exc()}")
    finally:
        say("stopping every process started")
        with signals_ignored():
            stack.stop()
    report.meta["loadavg_at_end"] = os.getloadavg()
    report.targets = evaluate(report, opts)
    return report, failures
