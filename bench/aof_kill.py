"""Acknowledged writes a Valkey with AOF loses when its process is SIGKILLed, by appendfsync policy
and disk load.

`python -m bench.aof_kill` (about 40 s with the defaults on a quiet 2-core machine): for each
disk (idle, then busy) and policy (everysec, always), a fresh embedded Valkey under
.data/bench-aof/ on the real disk (never tmpfs: the page cache is the point), N asyncio clients
INCRing one counter for a random 0.3-1.0 s, then SIGKILL, restart, wait out LOADING and read the
counter back; repeated K times.
An INCR's reply is the counter's new value, so an acknowledged write is lost when its reply is
above the value the restarted server replays. "busy" is a second process doing what
`dd if=/dev/zero of=FILE bs=1M count=300 conv=fsync` does, in a loop, on the same filesystem.

Why everysec loses writes to a *process* kill on a busy disk: Valkey normally write()s its AOF
buffer to the file before it sends the replies of that event-loop pass, so a killed process
leaves every acknowledged write in the page cache. But while the previous second's background
fsync is still running, everysec postpones that write() (up to 2 s) and keeps replying; the buffer
dies with the process. `always` write()s and fsyncs before replying, so it cannot lose an
acknowledged write to a process kill (the machine staying up). The INFO sample taken just before
each kill (aof_buffer_length, aof_pending_bio_fsync) shows the postponed buffer.

Everything listens on 127.0.0.1; the JSON goes to bench/results/aof-kill-<stamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, RedisError

from bench.processes import say
from bench.results import percentile, run_meta
from bench.table import render
from deploy.embedded import Valkey, free_port

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data" / "bench-aof"
RESULTS = ROOT / "bench" / "results"

Policy = Literal["everysec", "always"]
Disk = Literal["idle", "busy"]
POLICIES: tuple[Policy, ...] = ("everysec", "always")
DISKS: tuple[Disk, ...] = ("idle", "busy")

# The only key, on a Valkey of this tool's own that no Redline code touches (so not a Redline
# key, and not in shared/store/keys.py).
COUNTER = "aof-kill:counter"
BUSY_MB = 300  # per pass of the disk writer, as the dd command above
INFO_TIMEOUT_S = 1.0  # under `always` on a busy disk even INFO waits for the fsync


@dataclass(frozen=True)
class Options:
    kills: int = 10  # per (policy, disk) cell
    clients: int = 4
    seed: int | None = None  # None: a random one, recorded in the report
    seconds_per_kill: float = 15.0  # the whole run is bounded by this x kills x cells
    write_s: tuple[float, float] = (0.3, 1.0)  # writes before each kill: uniform in this range
    busy_warmup_s: float = 1.0  # the disk writer runs this long before a busy cell's first kill
    policies: tuple[Policy, ...] = POLICIES
    disks: tuple[Disk, ...] = DISKS
    data_dir: Path = DATA


@dataclass
class KillRun:
    index: int
    write_s: float  # from the first INCR sent to the SIGKILL
    acked: int  # INCRs answered before the kill
    last_acked: int  # the highest value an INCR answered (0: none answered)
    recovered: int  # the counter after the restart replayed the AOF
    lost: int  # acknowledged INCRs whose value is above `recovered`
    restart_s: float  # from the SIGKILL to the first GET answered (not LOADING)
    # INFO persistence just before the kill (None: INFO did not answer within INFO_TIMEOUT_S).
    aof_buffer_bytes: int | None = None  # accepted but not yet write()n to the AOF file
    fsync_pending: bool | None = None  # a background fsync was still running
    delayed_fsyncs: int | None = None  # since this start: writes that stopped waiting after 2 s


@dataclass
class Cell:
    policy: Policy
    disk: Disk
    kills: list[KillRun] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # every acked INCR
    # Share of the cell's time some task on the machine was stalled on I/O (/proc/pressure/io),
    # ours and anyone else's: an "idle" cell with a high share had a busy neighbour.
    io_stall: float | None = None

    @property
    def lossy_kills(self) -> int:
        return sum(1 for k in self.kills if k.lost)

    @property
    def lost_total(self) -> int:
        return sum(k.lost for k in self.kills)

    @property
    def lost_max(self) -> int:
        return max((k.lost for k in self.kills), default=0)

    @property
    def acked(self) -> int:
        return sum(k.acked for k in self.kills)

    @property
    def writes_per_s(self) -> float | None:
        seconds = sum(k.write_s for k in self.kills)
        return self.acked / seconds if seconds else None

    def latency_ms(self, q: float) -> float | None:
        return percentile(sorted(self.latencies_ms), q)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "disk": self.disk,
            "kills": len(self.kills),
            "lossy_kills": self.lossy_kills,
            "acked": self.acked,
            "lost_total": self.lost_total,
            "lost_max": self.lost_max,
            "writes_per_s": self.writes_per_s,
            "p50_ms": self.latency_ms(50),
            "p99_ms": self.latency_ms(99),
            "max_ms": self.latency_ms(100),
            "io_stall": self.io_stall,
            "runs": [asdict(k) for k in self.kills],
        }


@dataclass
class AofKillReport:
    meta: dict[str, Any]
    cells: list[Cell] = field(default_factory=list)
    complete: bool = False  # False: the time bound (or a failure) stopped it early

    def cell(self, policy: Policy, disk: Disk) -> Cell | None:
        return next((c for c in self.cells if (c.policy, c.disk) == (policy, disk)), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "complete": self.complete,
            "cells": [c.to_json() for c in self.cells],
        }


def table(report: AofKillReport) -> str:
    headers = (
        "policy",
        "disk",
        "kills",
        "lossy kills",
        "acked",
        "acked lost",
        "max lost/kill",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "io stall",
    )

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows = [
        (
            c.policy,
            c.disk,
            str(len(c.kills)),
            str(c.lossy_kills),
            f"{c.acked:,}",
            f"{c.lost_total:,}",
            f"{c.lost_max:,}",
            "-" if c.writes_per_s is None else f"{c.writes_per_s:,.0f}",
            ms(c.latency_ms(50)),
            ms(c.latency_ms(99)),
            "-" if c.io_stall is None else f"{c.io_stall:.0%}",
        )
        for c in report.cells
    ]
    return render(headers, rows)


# The busy disk --------------------------------------------------------------------------------


def _write_forever(path: str, mb: int, parent: int) -> None:
    """What `dd if=/dev/zero of=path bs=1M count=mb conv=fsync` does, over and over: the page
    cache fills with dirty pages and the fsync at the end of each pass keeps the disk busy, so
    Valkey's own background fsyncs queue behind it. Stops when its parent is gone."""
    block = bytes(1 << 20)
    while os.getppid() == parent:
        with open(path, "wb") as f:
            for _ in range(mb):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def busy_disk(path: Path) -> Iterator[None]:
    # spawn, not fork: the parent runs an event loop and holds sockets.
    proc = multiprocessing.get_context("spawn").Process(
        target=_write_forever, args=(str(path), BUSY_MB, os.getpid()), daemon=True
    )
    proc.start()
    try:
        yield
    finally:
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        path.unlink(missing_ok=True)


def _io_stall_us() -> int | None:
    """Microseconds, since boot, during which some task was stalled on I/O (Linux PSI)."""
    try:
        first = Path("/proc/pressure/io").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first.rsplit("total=", 1)[1])


# One kill -------------------------------------------------------------------------------------


def _client(port: int) -> Redis:
    return Redis(host="127.0.0.1", port=port, single_connection_client=True)


async def _incr_until_dead(port: int, acked: list[int], latencies_ms: list[float]) -> None:
    """INCR in a loop, noting each reply and its round trip, until the server is gone."""
    r = _client(port)
    try:
        while True:
            t0 = time.perf_counter()
            value = await r.incr(COUNTER)
            latencies_ms.append((time.perf_counter() - t0) * 1000)
            acked.append(int(value))
    except (RedisError, OSError):
        return  # the kill: a reset or EOF on the connection, or refused if it was not up yet
    finally:
        with contextlib.suppress(RedisError, OSError):
            await r.aclose()


async def _persistence(port: int) -> dict[str, Any] | None:
    r = _client(port)
    try:
        info: dict[str, Any] = await asyncio.wait_for(r.info("persistence"), INFO_TIMEOUT_S)
        return info
    except (TimeoutError, RedisError, OSError):
        return None
    finally:
        with contextlib.suppress(RedisError, OSError):
            await r.aclose()


async def _read_counter(port: int) -> int:
    """The counter once the restarted server has replayed its AOF (LOADING until then)."""
    r = _client(port)
    try:
        while True:
            try:
                value = await r.get(COUNTER)
            except BusyLoadingError:
                await asyncio.sleep(0.02)
                continue
            return int(value or 0)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await r.aclose()


async def one_kill(
    valkey: Valkey, index: int, clients: int, write_s: float, cell: Cell, deadline: float
) -> KillRun:
    acked: list[int] = []
    writers = [
        asyncio.create_task(_incr_until_dead(valkey.port, acked, cell.latencies_ms))
        for _ in range(clients)
    ]
    started = time.monotonic()
    await asyncio.sleep(write_s)
    info = await _persistence(valkey.port)
    valkey.kill()  # SIGKILL and wait: from here on the server sends nothing
    killed = time.monotonic()
    # Replies already in the sockets were sent by the server: they are acknowledged, and the
    # writers read them before they see the connection close.
    await asyncio.gather(*writers)
    valkey.start(timeout=max(1.0, min(15.0, deadline - time.monotonic())))
    recovered = await _read_counter(valkey.port)
    return KillRun(
        index=index,
        write_s=killed - started,
        acked=len(acked),
        last_acked=max(acked, default=0),
        recovered=recovered,
        lost=sum(1 for v in acked if v > recovered),
        restart_s=time.monotonic() - killed,
        aof_buffer_bytes=None if info is None else int(info["aof_buffer_length"]),
        fsync_pending=None if info is None else bool(info["aof_pending_bio_fsync"]),
        delayed_fsyncs=None if info is None else int(info["aof_delayed_fsync"]),
    )


# The run --------------------------------------------------------------------------------------


def _filesystem(path: Path) -> str | None:
    """The type of the filesystem `path` is on (longest mount point that holds it)."""
    best: tuple[int, str] | None = None
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (path == Path(mount) or Path(mount) in path.parents) and (
            best is None or len(mount) > best[0]
        ):
            best = (len(mount), parts[2])
    return None if best is None else best[1]


def meta(opts: Options, seed: int) -> dict[str, Any]:
    data_dir = opts.data_dir.resolve()
    return {
        **run_meta(ROOT),
        "valkey": subprocess.run(
            [str(Valkey.binary()), "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "data_dir": str(data_dir),
        "filesystem": _filesystem(data_dir),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
        "seed": seed,
        "busy_writer": f"dd if=/dev/zero bs=1M count={BUSY_MB} conv=fsync, in a loop (Python)",
        "note": "lost = acknowledged INCRs whose reply is above the counter after the restart",
    }


async def measure(opts: Options, progress: Callable[[str], None] = say) -> AofKillReport:
    """Run every (disk, policy) cell; stops early (complete=False) at the time bound."""
    seed = opts.seed if opts.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    report = AofKillReport(meta(opts, seed))
    cells = [(p, d) for d in opts.disks for p in opts.policies]  # idle cells before busy ones
    budget = opts.seconds_per_kill * opts.kills * len(cells)
    deadline = time.monotonic() + budget
    data_dir = opts.data_dir.resolve()
    progress(
        f"{len(cells)} cells x {opts.kills} kills, {opts.clients} clients, writes"
        f" {opts.write_s[0]:g}-{opts.write_s[1]:g} s per kill, seed {seed}; data in {data_dir}"
        f" ({report.meta['filesystem']}); bounded at {budget:.0f} s"
    )
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + budget):
            for policy, disk in cells:
                cell = Cell(policy, disk)
                report.cells.append(cell)
                await _run_cell(opts, cell, data_dir / f"{policy}-{disk}", rng, deadline, progress)
        report.complete = True
    except TimeoutError:
        progress(f"stopped at the time bound ({budget:.0f} s): the report is partial")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


async def _run_cell(
    opts: Options,
    cell: Cell,
    data_dir: Path,
    rng: random.Random,
    deadline: float,
    progress: Callable[[str], None],
) -> None:
    shutil.rmtree(data_dir, ignore_errors=True)
    valkey = Valkey(data_dir / "valkey", free_port(), aof=True, appendfsync=cell.policy)
    label = f"{cell.policy}/{cell.disk}"
    stall0, t0 = _io_stall_us(), time.monotonic()
    with contextlib.ExitStack() as stack:
        valkey.start()
        stack.callback(valkey.kill)
        if cell.disk == "busy":
            stack.enter_context(busy_disk(data_dir / "busy.bin"))
            await asyncio.sleep(opts.busy_warmup_s)
        for i in range(opts.kills):
            run = await one_kill(
                valkey, i, opts.clients, rng.uniform(*opts.write_s), cell, deadline
            )
            cell.kills.append(run)
            buffer = "-" if run.aof_buffer_bytes is None else f"{run.aof_buffer_bytes:,} B"
            pending = {None: "?", True: "yes", False: "no"}[run.fsync_pending]
            progress(
                f"{label} kill {i + 1}/{opts.kills}: {run.acked:,} acked in {run.write_s:.2f} s,"
                f" last {run.last_acked:,}, replayed {run.recovered:,}, lost {run.lost:,}"
                f" (unwritten AOF buffer {buffer}, fsync running {pending});"
                f" back in {run.restart_s:.2f} s"
            )
            stall1 = _io_stall_us()
            if stall0 is not None and stall1 is not None:
                cell.io_stall = (stall1 - stall0) / 1e6 / (time.monotonic() - t0)
        stall = "" if cell.io_stall is None else f"; I/O stall {cell.io_stall:.0%} of the time"
        progress(
            f"{label}: {cell.lossy_kills}/{len(cell.kills)} kills lost writes,"
            f" {cell.lost_total:,} acked lost (max {cell.lost_max:,}){stall}"
        )


# Command line ---------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None = None) -> tuple[Options, Path]:
    p = argparse.ArgumentParser(prog="python -m bench.aof_kill", description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs per policy x disk (10)")
    p.add_argument("--clients", type=int, default=4, help="concurrent INCR clients (4)")
    p.add_argument("--seed", type=int, default=None, help="random seed (a random one)")
    p.add_argument(
        "--seconds-per-kill",
        type=float,
        default=15.0,
        help="time bound of the whole run, per kill (15: 10 minutes with the defaults)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--data-dir", type=Path, default=DATA, help="on the real disk; wiped")
    ns = p.parse_args(argv)
    if ns.kills < 1 or ns.clients < 1 or ns.seconds_per_kill <= 0:
        p.error("--kills and --clients must be >= 1, --seconds-per-kill > 0")
    opts = Options(
        kills=ns.kills,
        clients=ns.clients,
        seed=ns.seed,
        seconds_per_kill=ns.seconds_per_kill,
        data_dir=Path(ns.data_dir).resolve(),
    )
    return opts, Path(ns.results_dir).resolve()


def save(report: AofKillReport, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(report.meta["started_at"]).strftime("%Y%m%dT%H%M%SZ")
    path = results_dir / f"aof-kill-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=1, default=str))
    os.replace(tmp, path)
    return path


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    opts, results_dir = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # cleans up (servers, disk writer) like Ctrl-C
    try:
        report = asyncio.run(measure(opts))
    except KeyboardInterrupt:
        say("interrupted: every process started was stopped")
        return 130
    print()
    print(table(report), flush=True)
    print()
    say(f"saved {save(report, results_dir)}")
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
