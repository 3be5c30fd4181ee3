"""One load scenario against one system, started fresh for it and stopped after, so that one
run's connections, caches and pending statistics never leak into the next."""

from __future__ import annotations

import asyncio
import random
import time

import asyncpg
import psutil

from bench import systems, workload
from bench.load import ClosedLoop, OpenLoop, Recorder
from bench.meters import CpuMeter, DirtySampler, durable, row_writes, table_writes
from bench.options import OPEN_LOOP, Options
from bench.processes import say
from bench.results import LoadRun
from bench.stack import Stack
from shared.store.keys import Keys

WARM_CONNECTIONS = 16
TICK_S = 5.0


async def _ticker(label: str, rec: Recorder) -> None:
    start = time.perf_counter()
    while True:
        await asyncio.sleep(TICK_S)
        errors = sum(rec.errors.values())
        say(f"  {label}: {time.perf_counter() - start:4.0f}s  {rec.ok:,} ok  {errors} errors")


async def measure(
    stack: Stack, system: str, scenario: str, opts: Options, work: workload.Workload
) -> LoadRun:
    label = f"{scenario} {system}"
    say(f"{label}: starting {system}")
    running = await asyncio.to_thread(systems.start, stack, system, opts.flush_interval)
    settings = systems.redline_settings(stack, opts.flush_interval)
    conn = await asyncpg.connect(stack.database_url)
    try:
        requests = workload.requests(
            running.port, work, opts.content_bytes, random.Random(opts.seed)
        )
        driver: OpenLoop | ClosedLoop
        duration = opts.duration_of(scenario)
        if scenario in OPEN_LOOP:
            driver = OpenLoop(
                running.port, requests, opts.rate, duration, opts.max_open_connections
            )
        else:
            driver = ClosedLoop(running.port, requests, opts.connections, duration)
        # Counted from before the warm-up: its edits' rows may be published late (naive), so
        # they count on both sides of edits per write.
        tables0 = await table_writes(conn)
        warm = await driver.warm(WARM_CONNECTIONS, len(work.tokens))
        if set(warm) - {202}:
            say(f"{label}: warm-up answers {dict(warm)} (expected only 202)")
        if isinstance(driver, OpenLoop):
            await driver.prewarm(WARM_CONNECTIONS)
        meter = CpuMeter(
            {
                "server": lambda: stack.child_procs(running.server),
                "flusher": lambda: stack.child_procs("flusher"),
                "redis": stack.valkey_procs,
                "postgres": stack.postgres_procs,
                "loadgen": lambda: [psutil.Process()],
            }
        )
        sampler = DirtySampler(settings.state_url, Keys(settings.key_prefix, settings.doc_shards))
        say(
            f"{label}: running {duration:.0f}s "
            + (
                f"at {opts.rate:,.0f} edits/s"
                if scenario in OPEN_LOOP
                else f"x{opts.connections} connections"
            )
        )
        meter.start()
        background = [asyncio.create_task(_ticker(label, driver.rec))]
        # Only the flush-lag run, whose target it measures: in the others its process took CPU
        # from the 2-core host during Redline's runs alone (about 1 s of 20 in the open loop).
        sampling = system == "redline" and scenario == "lag"
        if sampling:
            sampler.start(time.perf_counter())
        try:
            rec = await driver.run(opts.drain_timeout)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.to_thread(sampler.stop)
        cpu = meter.stop()
        # Stop the HTTP server first: its Postgres backends publish their counters as they exit.
        # Redline's flusher keeps running (its drain-on-exit would count as writes otherwise).
        await asyncio.to_thread(stack.children.stop, running.server)
        await asyncio.sleep(1.0)
        tables = row_writes(tables0, await table_writes(conn))
        if system == "naive":
            await conn.execute("VACUUM naive.documents")  # no autovacuum noise in the next run
    finally:
        await conn.close()
        if running.flusher:
            await asyncio.to_thread(stack.children.stop, running.flusher, 90)
        await asyncio.to_thread(stack.children.stop, running.server)
    result = LoadRun.of(scenario, system, rec, opts.rate if scenario in OPEN_LOOP else None)
    result.pg_row_writes = durable(tables)
    result.pg_table_writes = tables
    result.warm_ok = sum(n for status, n in warm.items() if 200 <= status < 300)
    result.cpu_s = cpu
    result.warm_statuses = {str(k): v for k, v in warm.items()}
    if sampling:
        result.max_dirty_age_s = sampler.max_age_s
        result.dirty = sampler.samples
    say(
        f"{label}: {result.achieved_per_s:,.0f}/s  p50 {result.p50_ms or 0:.2f} ms"
        f"  p99 {result.p99_ms or 0:.2f} ms  errors {result.error_count}"
        f"  pg writes {result.pg_row_writes:,}  pg cpu {cpu['postgres']:.2f}s"
    )
    return result
