"""Load drivers: open loop (requests at fixed times whatever the responses) and closed loop (N
connections, each sending its next request when the last answered).

Open-loop latency is measured from each request's *scheduled* time, so a server (or generator) that
falls behind shows its queueing in the numbers instead of silently sending less.
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections import Counter, deque
from collections.abc import Coroutine, Sequence

from bench.client import Connection, connect, now

HOST = "127.0.0.1"
EARLY_S = 0.001  # the open loop may send a request this much before its time, never later


class Recorder:
    """What one run saw: latencies and completion times of 2xx answers, and errors by kind."""

    def __init__(self) -> None:
        self.latencies_ms = array("d")
        self.done_s = array("d")  # completion time of each 2xx, seconds since the run's start
        self.lag_ms = array("d")  # open loop: how late the generator sent each request
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.connections = 0
        self.duration_s = 0.0
        self.t0 = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    def record(self, status: int, started: float, at: float) -> None:
        if 200 <= status < 300:
            self.latencies_ms.append((at - started) * 1000)
            self.done_s.append(at - self.t0)
        else:
            self.errors[str(status)] += 1


class _Driver:
    """Connection bookkeeping shared by both loops."""

    def __init__(self, port: int, requests: Sequence[bytes]) -> None:
        self.port = port
        self.requests = requests
        self.rec = Recorder()
        self.conns: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self) -> Connection:
        conn = await connect(HOST, self.port, self)
        self.conns.add(conn)
        self.rec.connections = max(self.rec.connections, len(self.conns))
        return conn

    async def warm(self, count: int, first: int) -> Counter[int]:
        """Send the first `first` requests over `count` connections, each connection its next
        one as the last is answered, then close them; return the statuses seen. With `first`
        the number of editors, every editor's session and document is touched once before the
        run, so a run measures the steady state for every system, not Redline's first load of
        each document from Postgres (84 of 100 documents were first touched in the run's first
        100 ms, and those 250 requests, up to 150 ms late, were a whole 1% tail)."""
        seen: Counter[int] = Counter()
        waiter = _Warm(seen, self.requests[: max(first, count)])
        for _ in range(count):
            waiter.next(await connect(HOST, self.port, waiter))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10 + first / 100):
                await waiter.done.wait()
        for conn in waiter.conns:
            conn.close()
        return seen

    async def run(self, drain_timeout: float) -> Recorder:
        """The run; however it ends, every connection and helper task is closed after."""
        try:
            return await self._run(drain_timeout)
        finally:
            await self.close()

    async def _run(self, drain_timeout: float) -> Recorder:
        raise NotImplementedError

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        await asyncio.sleep(0)

    def response(self, conn: Connection, status: int) -> None:
        raise NotImplementedError

    def lost(self, conn: Connection) -> None:
        raise NotImplementedError


class _Warm:
    def __init__(self, seen: Counter[int], requests: Sequence[bytes]) -> None:
        self.seen = seen
        self.pending = deque(requests)
        self.left = len(requests)
        self.conns: list[Connection] = []
        self.done = asyncio.Event()

    def next(self, conn: Connection) -> None:
        """Send `conn` the next request, or keep it to close once all are answered."""
        if self.pending:
            conn.send(self.pending.popleft(), now())
        else:
            self.conns.append(conn)

    def response(self, conn: Connection, status: int) -> None:
        self.seen[status] += 1
        self._one()
        self.next(conn)

    def lost(self, conn: Connection) -> None:
        if conn.in_flight:
            self.seen[0] += 1
            self._one()

    def _one(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


class OpenLoop(_Driver):
    """`rate` requests a second for `duration` seconds, request n at t0 + n / rate. A request with
    no idle connection waits in a queue (its latency keeps counting) while the pool grows up to
    `max_conns`. A connection the server closed while idle is retried once on another."""

    def __init__(
        self, port: int, requests: Sequence[bytes], rate: float, duration: float, max_conns: int
    ) -> None:
        super().__init__(port, requests)
        self.rate = rate
        self.duration = duration
        self.max_conns = max_conns
        self._idle: list[Connection] = []
        self._queue: deque[tuple[float, bytes, bool]] = deque()
        self._connecting = 0
        self._outstanding = 0
        self._all_sent = False
        self._drained = asyncio.Event()

    async def prewarm(self, count: int) -> None:
        for _ in range(min(count, self.max_conns)):
            self._idle.append(await self._open())

    async def _run(self, drain_timeout: float) -> Recorder:
        rec = self.rec
        total = max(1, round(self.rate * self.duration))
        interval = 1.0 / self.rate
        requests, n_requests = self.requests, len(self.requests)
        rec.t0 = t0 = now() + 0.01
        n = 0
        while n < total:
            t = now()
            due = t0 + n * interval
            if due > t + EARLY_S:
                # Event-loop timers have millisecond resolution (uvloop runs a shorter sleep at
                # once): sleeping for less would spin the loop and eat the generator's CPU.
                await asyncio.sleep(due - t - EARLY_S / 2)
                continue
            while n < total and due <= t + EARLY_S:
                rec.lag_ms.append(max(0.0, t - due) * 1000)
                # Latency counts from the scheduled time, or from the send if that was earlier.
                self._submit(min(due, t), requests[n % n_requests])
                n += 1
                due = t0 + n * interval
        rec.sent = total
        self._all_sent = True
        if self._outstanding:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout):
                    await self._drained.wait()
        if self._outstanding:
            rec.errors["timeout"] += self._outstanding
        rec.duration_s = max(self.duration, max(rec.done_s, default=0.0))
        return rec

    def _submit(self, started: float, request: bytes) -> None:
        self._outstanding += 1
        if self._idle:
            self._idle.pop().send(request, started)
        else:
            self._queue.append((started, request, False))
            self._grow()

    def _grow(self) -> None:
        while len(self.conns) + self._connecting < self.max_conns and self._connecting < len(
            self._queue
        ):
            self._connecting += 1
            self._spawn(self._add_connection())

    async def _add_connection(self) -> None:
        try:
            conn = await self._open()
        except OSError:
            self.rec.errors["connect"] += 1
            await asyncio.sleep(0.05)  # a dead server must not turn into a busy loop
            self._connecting -= 1
            self._grow()
            return
        self._connecting -= 1
        self._ready(conn)

    def _ready(self, conn: Connection) -> None:
        if self._queue:
            started, request, retried = self._queue.popleft()
            conn.send(request, started, retried)
        else:
            self._idle.append(conn)

    def _finish_one(self) -> None:
        self._outstanding -= 1
        if self._all_sent and self._outstanding == 0:
            self._drained.set()

    def response(self, conn: Connection, status: int) -> None:
        self.rec.record(status, conn.started, now())
        self._finish_one()
        if not conn.closed:
            self._ready(conn)

    def lost(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if self.closing:
            return
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.in_flight:
            conn.in_flight = False
            if not conn.got_bytes and not conn.retried:
                # Closed under us before any answer (an idle keep-alive timeout): send it again.
                self._queue.appendleft((conn.started, conn.request, True))
            else:
                self.rec.errors["connection"] += 1
                self._finish_one()
        if self._queue:
            self._grow()


class ClosedLoop(_Driver):
    """`conns` connections, each sending its next request as soon as the last one answered, for
    `duration` seconds. Latency is from each send; throughput counts answers inside the window."""

    def __init__(self, port: int, requests: Sequence[bytes], conns: int, duration: float) -> None:
        super().__init__(port, requests)
        self.want = conns
        self.duration = duration
        self._n = 0
        self._end = 0.0
        self._active = 0
        self._done = asyncio.Event()

    async def _run(self, drain_timeout: float) -> Recorder:
        rec = self.rec
        opened = [await self._open() for _ in range(self.want)]
        rec.t0 = now()
        self._end = rec.t0 + self.duration
        self._active = len(opened)
        for conn in opened:
            self._next(conn)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.duration + drain_timeout):
                await self._done.wait()
        late = sum(1 for c in self.conns if c.in_flight)
        if late:
            rec.errors["timeout"] += late
        rec.duration_s = self.duration
        return rec

    def _next(self, conn: Connection) -> None:
        request = self.requests[self._n % len(self.requests)]
        self._n += 1
        self.rec.sent += 1
        conn.send(request, now())

    def _retire(self) -> None:
        self._active -= 1
        if self._active <= 0:
            self._done.set()

    def response(self, conn: Connection, status: int) -> None:
        t = now()
        self.rec.record(status, conn.started, t)
        if conn.closed:
            self._spawn(self._replace())
        elif t < self._end:
            self._next(conn)
        else:
            self._retire()

    def lost(self, conn: Connection) -> None:
        self.conns.discard(conn)
        if self.closing:
            return
        if conn.in_flight:
            conn.in_flight = False
            self.rec.errors["connection"] += 1
            self._spawn(self._replace())

    async def _replace(self) -> None:
        if now() >= self._end:
            self._retire()
            return
        try:
            conn = await self._open()
        except OSError:
            self.rec.errors["connect"] += 1
            await asyncio.sleep(0.05)
            self._spawn(self._replace())
            return
        self._next(conn)
