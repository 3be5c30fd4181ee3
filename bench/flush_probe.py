"""One flusher pass over co-edited documents, step by step, and what it does to Valkey's other
clients: `python -m bench.flush_probe --docs 10 --bytes 524288` (Redline's own Flusher, on an
embedded Valkey and Postgres of its own under --data-dir, wiped first).

The documents are seeded as the api seeds them and given --keystrokes appends each (as a cell of
`--scenarios collab` leaves them between two passes); then --passes timed `flush_dirty()` calls,
each with a probe beside it: a connection of its own sending one PING at a time, back to back,
whose longest round trips are how long Valkey kept every other client (the api's appends) waiting.
Printed per pass: each step's wall time (read_docs, fold, Postgres write, mark_clean keeping the
folds), the probe's p50/p99/max round trip, and Valkey's time per script (commandstats).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.backlog import insert_and_load
from bench.compaction import seed_all, type_into
from bench.meters import CpuMeter
from bench.options import ROOT
from bench.processes import say
from bench.results import percentile
from bench.stack import Stack
from bench.systems import redline_settings
from bench.workload import text
from services.flusher.flush import Flusher
from shared.domain import collab
from shared.infra.clients import create_db_pool, redis_client
from shared.store import queries
from shared.store.keys import Keys
from shared.store.scripts import Scripts, lua_source
from shared.store.update_log import UpdateLog, append_options

PREFIX = "rlprobe"
SCRIPTS = ("read_docs", "collab_read", "mark_clean", "claim", "release")
T = TypeVar("T")
STALL_MS = 1.0


class Steps:
    """Wall seconds spent in each wrapped call during a pass."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.spans: list[tuple[float, float, str]] = []  # (perf_counter start, end, name)

    def wrap(
        self, name: str, fn: Callable[..., Awaitable[T]]
    ) -> Callable[..., Coroutine[Any, Any, T]]:
        async def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.add(name, started, time.perf_counter())

        return timed

    def wrap_sync(self, name: str, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, started, time.perf_counter())

        return timed

    def add(self, name: str, started: float, ended: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + ended - started
        self.spans.append((started, ended, name))

    def during(self, at: float) -> str:
        """The step running at `at` (perf_counter), or "between"."""
        for started, ended, name in self.spans:
            if started <= at <= ended:
                return name
        return "between"


# The probe runs in a process of its own: in this one, the flusher's synchronous work (the
# pycrdt folds) would stall the probe's event loop and pass for Valkey's stall.
PROBE = """
import json, signal, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts, stop = [], []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("ready", flush=True)
while not stop:
    started = time.perf_counter()
    s.sendall(b"PING\\r\\n")
    while not s.recv(64).endswith(b"\\r\\n"):
        pass
    rtts.append((started, (time.perf_counter() - started) * 1000))
print(json.dumps(rtts), flush=True)
"""


async def _probe(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROBE, str(port), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    await proc.stdout.readline()
    return proc


async def _probed(proc: asyncio.subprocess.Process) -> list[tuple[float, float]]:
    """(perf_counter when sent, round trip ms) of each PING: CLOCK_MONOTONIC, as here."""
    proc.send_signal(signal.SIGTERM)
    out, _ = await proc.communicate()
    return [(at, ms) for at, ms in json.loads(out.decode())]


def _keystrokes(content: str, client_id: int, count: int, rng: random.Random) -> list[bytes]:
    doc, typed = collab.new_doc(collab.seed_update(content), client_id=client_id)
    out = []
    for _ in range(count):
        before = doc.get_state()
        typed.insert(rng.randrange(len(typed) + 1), rng.choice("abcdef"))
        out.append(doc.get_update(before))
    return out


STORAGE = {
    # As migrated: since migration 006, TOASTed out of line uncompressed (no pglz CPU).
    "default": [],
    # Postgres's own default, pglz-compressed: what 006 replaced, for comparison.
    "extended": [
        "ALTER TABLE documents ALTER COLUMN content SET STORAGE EXTENDED",
        "ALTER TABLE documents ALTER COLUMN ystate SET STORAGE EXTENDED",
    ],
    "lz4": [
        "ALTER TABLE documents ALTER COLUMN content SET COMPRESSION lz4",
        "ALTER TABLE documents ALTER COLUMN ystate SET COMPRESSION lz4",
    ],
}


async def run(
    stack: Stack, docs: int, size: int, keystrokes: int, passes: int, storage: str
) -> None:
    settings = redline_settings(stack, 1, key_prefix=PREFIX)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    rng = random.Random(1)
    redis = redis_client(settings.state_url)
    state_bytes = redis_client(settings.state_url, binary=True)
    db = await create_db_pool(settings, init=queries.prepare_flush_connection)
    scripts = Scripts(redis, keys)
    log = UpdateLog(state_bytes, keys, append_options(settings))
    flusher = Flusher(settings, redis, db, scripts, keys, log)
    steps = Steps()
    # Instance attributes shadow the methods for this flusher only.
    log.read_docs = steps.wrap("read_docs", log.read_docs)  # type: ignore[method-assign]
    scripts.mark_clean_shards = steps.wrap(  # type: ignore[method-assign]
        "mark_clean", scripts.mark_clean_shards
    )
    fold, write = collab.fold, queries.write_documents
    collab.fold = steps.wrap_sync("fold", fold)
    queries.write_documents = steps.wrap("pg_write", write)
    names = {hashlib.sha1(lua_source(n).encode()).hexdigest(): n for n in SCRIPTS}
    names[hashlib.sha1(lua_source("collab_append").encode()).hexdigest()] = "collab_append"
    try:
        async with db.acquire() as conn:
            for statement in STORAGE[storage]:
                await conn.execute(statement)
        tenant = str(uuid.uuid4())
        grants = (f"t:{tenant}",)
        ids = [str(uuid.uuid4()) for _ in range(docs)]
        contents = [text(rng, size) for _ in range(docs)]
        say(
            f"flush probe: {docs} documents of {size:,} B, {keystrokes} keystrokes each a pass,"
            f" Postgres storage {storage}"
        )
        await insert_and_load(stack, scripts, tenant, "probe", contents, ids)
        await seed_all(log, ids, [collab.seed_update(c) for c in contents], "flush probe")
        for n in range(passes):
            typed = [_keystrokes(c, 1000 + n, keystrokes, rng) for c in contents]
            await type_into(log, ids, typed, grants, "probe")
            await state_bytes.config_resetstat()
            steps.seconds.clear()
            steps.spans.clear()
            probe = await _probe(stack.valkey.port)
            meter = CpuMeter(
                {
                    "postgres": stack.postgres_procs,
                    "valkey": stack.valkey_procs,
                    "flusher": lambda: [psutil.Process()],
                }
            )
            meter.start()
            started = time.perf_counter()
            stats = await flusher.flush_dirty()
            seconds = time.perf_counter() - started
            cpu = meter.stop()
            await asyncio.sleep(0.05)
            pings = await _probed(probe)
            ordered = sorted(ms for _, ms in pings)
            stalls: dict[str, list[float]] = {}
            for at, ms in pings:
                if ms > STALL_MS:
                    stalls.setdefault(steps.during(at + ms / 2000), []).append(ms)
            info = await state_bytes.info("commandstats")
            valkey = []
            for key, v in info.items():
                name = key.removeprefix("cmdstat_")
                if name == "evalsha" or float(v["usec"]) < 1000:
                    continue
                valkey.append(f"{name} {v['calls']}x{v['usec_per_call']:.0f}us")
            slow = await state_bytes.slowlog_get(200)
            per_script: dict[str, list[int]] = {}
            for e in slow:
                args = e.get("command", b"")
                words = (args.decode(errors="replace") if isinstance(args, bytes) else args).split()
                if len(words) > 1 and words[0].upper() == "EVALSHA":
                    per_script.setdefault(names.get(words[1], words[1][:8]), []).append(
                        int(e["duration"])
                    )
            await state_bytes.slowlog_reset()
            say(
                f"pass {n + 1}: {stats.read} docs in {seconds * 1000:.0f} ms; steps "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.seconds.items())
                + "; CPU "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in cpu.items())
            )
            say(
                f"  probe PING rtt: {len(ordered)} sent, p50 {percentile(ordered, 50) or 0:.2f}"
                f" p99 {percentile(ordered, 99) or 0:.2f}"
                f" max {ordered[-1] if ordered else 0:.2f} ms"
            )
            say(
                f"  probe round trips over {STALL_MS} ms, by the flusher step they fell in: "
                + (
                    "; ".join(
                        f"{k} {len(v)}, max {max(v):.1f} ms, sum {sum(v):.0f} ms"
                        for k, v in stalls.items()
                    )
                    or "none"
                )
            )
            say(
                "  valkey script calls over 1 ms (slowlog): "
                + "; ".join(
                    f"{k} {len(v)} calls, max {max(v) / 1000:.1f} ms, sum {sum(v) / 1000:.1f} ms"
                    for k, v in per_script.items()
                )
            )
            if valkey:
                say("  valkey commands over 1 ms in all: " + "; ".join(valkey))
    finally:
        collab.fold, queries.write_documents = fold, write
        await db.close()
        await state_bytes.aclose()
        await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.flush_probe", description=__doc__)
    p.add_argument("--docs", type=int, default=10)
    p.add_argument("--bytes", type=int, default=524288, help="each document's initial text")
    p.add_argument("--keystrokes", type=int, default=50, help="appends a document a pass")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument(
        "--pg-storage",
        choices=sorted(STORAGE),
        default="default",
        help="how Postgres stores content and ystate (an experiment: altered in this stack only)",
    )
    p.add_argument("--data-dir", type=Path, default=ROOT / ".data" / "flush-probe")
    ns = p.parse_args()
    stack = Stack(ns.data_dir.resolve())
    stack.start()
    try:
        asyncio.run(stack.prepare())
        client = redis_client(stack.redis_url)

        async def configure() -> None:
            await client.config_set("slowlog-log-slower-than", 1000)
            await client.config_set("slowlog-max-len", 1024)
            await client.aclose()

        asyncio.run(configure())
        asyncio.run(run(stack, ns.docs, ns.bytes, ns.keystrokes, ns.passes, ns.pg_storage))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
