"""`--collab-trace`: what happened around a co-editing cell's slow deliveries (Redline only).

Per cell it prints, after the cell's own line:
- the flusher's passes that ended during the cell (their log lines: end time and duration; a
  pass still running when the cell reports is not seen), and the p99 of the keystrokes typed
  while a pass ran against those typed outside every pass;
- the slow deliveries (over `SLOW_MS`) grouped into episodes, each with its wall time;
- the bench Valkey's SLOWLOG (commands over `SLOWLOG_US`), LATENCY LATEST and the costliest
  commands of INFO commandstats over the cell;
- the load client's own event-loop lag (a timer's overshoot), so a stall of the measuring
  process is not taken for the server's.

A diagnostic: it changes the bench's Valkey settings (latency monitor, slowlog threshold) and
resets its statistics, so its figures are not for the README tables.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.collab_client import Room
from bench.processes import say
from bench.results import percentile

SLOW_MS = 10.0
SLOWLOG_US = 1000
EPISODE_GAP_S = 0.05  # slow keystrokes closer than this belong to one episode
LAG_TICK_S = 0.001
# A pass's window is widened by this much after its end: replies it held back still arrive.
AFTER_PASS_S = 0.02
PASS = re.compile(r"in (\d+) batches, ([\d.]+)s")


@dataclass
class Tracer:
    valkey: Redis
    flusher_log: Path
    _log_at: int = 0
    _wall0: float = 0.0
    _perf0: float = 0.0
    _lags: list[float] = field(default_factory=list)
    _ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        v = self.valkey
        await v.config_set("latency-monitor-threshold", 1)
        await v.config_set("slowlog-log-slower-than", SLOWLOG_US)
        await v.config_set("slowlog-max-len", 1024)
        await v.execute_command("LATENCY", "RESET")  # type: ignore[no-untyped-call]
        await v.slowlog_reset()
        await v.config_resetstat()
        self._log_at = self.flusher_log.stat().st_size if self.flusher_log.exists() else 0
        self._wall0, self._perf0 = time.time(), time.perf_counter()
        self._lags = []
        self._ticker = asyncio.create_task(self._tick(), name="loop lag")

    async def _tick(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_TICK_S)
            self._lags.append((time.perf_counter() - before - LAG_TICK_S) * 1000)

    def _wall(self, perf: float) -> float:
        return self._wall0 + (perf - self._perf0)

    async def report(self, rooms: list[Room], label: str) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        samples = [
            (self._wall(at), ms)
            for r in rooms
            for at, ms in zip(r.typed_at, r.latencies_ms, strict=True)
        ]
        samples.sort()
        passes = self._passes()
        say(f"trace {label}: {len(passes)} flusher passes ended during the cell")
        for end, seconds, line in passes:
            say(f"  pass {_hms(end - seconds)} .. {_hms(end)} ({seconds * 1000:.0f} ms): {line}")

        def in_pass(wall: float) -> bool:
            return any(end - s <= wall <= end + AFTER_PASS_S for end, s, _ in passes)

        inside = sorted(ms for wall, ms in samples if in_pass(wall))
        outside = sorted(ms for wall, ms in samples if not in_pass(wall))
        say(
            f"  deliveries typed during a pass: {len(inside)}, p50 {_f(percentile(inside, 50))}"
            f" p99 {_f(percentile(inside, 99))} max {_f(inside[-1] if inside else None)} ms;"
            f" outside: {len(outside)}, p50 {_f(percentile(outside, 50))}"
            f" p99 {_f(percentile(outside, 99))} max {_f(outside[-1] if outside else None)} ms"
        )
        slow = [(wall, ms) for wall, ms in samples if ms > SLOW_MS]
        say(f"  {len(slow)} of {len(samples)} deliveries over {SLOW_MS:.0f} ms, by episode:")
        for first, last, count, worst in _episodes(slow)[:12]:
            say(f"    {_hms(first)} +{(last - first) * 1000:.0f} ms: {count}, max {worst:.1f} ms")
        lags = sorted(self._lags)
        say(
            f"  load client loop lag: p50 {_f(percentile(lags, 50))} p99"
            f" {_f(percentile(lags, 99))} max {_f(lags[-1] if lags else None)} ms"
        )
        await self._valkey_report()

    def _passes(self) -> list[tuple[float, float, str]]:
        """(end wall time, seconds, message) of each flush pass logged since `start`."""
        if not self.flusher_log.exists():
            return []
        with self.flusher_log.open("rb") as f:
            f.seek(self._log_at)
            lines = f.read().decode(errors="replace").splitlines()
        out: list[tuple[float, float, str]] = []
        for line in lines:
            try:
                rec: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            msg = str(rec.get("msg", ""))
            m = PASS.search(msg)
            if m is None or not msg.startswith("flushed"):
                continue
            ts = str(rec["ts"])
            end = (
                calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + int(ts[20:23]) / 1000
            )
            out.append((end, float(m.group(2)), msg))
        return out

    async def _valkey_report(self) -> None:
        v = self.valkey
        entries = await v.slowlog_get(30)
        say(f"  valkey SLOWLOG (> {SLOWLOG_US} us): {len(entries)} shown")
        for e in entries:
            args = e.get("command", b"")
            text = args.decode(errors="replace") if isinstance(args, bytes) else str(args)
            say(f"    {_hms(float(e['start_time']))} {e['duration']} us: {text[:90]}")
        latest = await v.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
        for event, at, last, worst, *_ in latest or []:  # Valkey 8 adds fields
            name = event.decode() if isinstance(event, bytes) else event
            say(f"  valkey LATENCY {name}: last {last} ms at {_hms(float(at))}, max {worst} ms")
        stats = await v.info("commandstats")
        top = sorted(stats.items(), key=lambda kv: -float(kv[1]["usec"]))[:6]
        say(
            "  valkey commandstats: "
            + "; ".join(
                f"{k.removeprefix('cmdstat_')} {v_['calls']} calls {v_['usec_per_call']:.1f} us"
                for k, v_ in top
            )
        )


def _episodes(slow: list[tuple[float, float]]) -> list[tuple[float, float, int, float]]:
    """(first, last, count, worst ms) of each run of slow samples, worst first."""
    out: list[tuple[float, float, int, float]] = []
    for wall, ms in slow:
        if out and wall - out[-1][1] <= EPISODE_GAP_S:
            first, _, count, worst = out[-1]
            out[-1] = (first, wall, count + 1, max(worst, ms))
        else:
            out.append((wall, wall, 1, ms))
    return sorted(out, key=lambda e: -e[3])


def _hms(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(wall)) + f".{int(wall * 1000) % 1000:03d}"


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
