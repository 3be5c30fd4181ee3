"""The session watcher: every local socket (match and events) registers here for its life.

`admit` takes the socket's place in its user's cap (services/matcher/quota.py; refused with 429
at the cap), accepts it and starts watching it; `release` undoes all three and closes it. The
heartbeat (every `pool_ttl_s / 3`) renews every socket's place in its cap, then runs the beats
an endpoint adds (`on_heartbeat`: the match endpoint refreshes its pool entries).

A socket lives no longer than the session it opened with, on every process:

- logout: `Accounts.close_session` publishes the token's hash; `Accounts.listen` hands it to
  `revoked`, which ends that session's sockets here at once;
- expiry: each session has a next-check time, its known expiry (sessions slide on every resolve,
  so reaching it means "look again", not "over"); at that time one PTTL per session (not per
  socket) either finds it gone (end its sockets) or learns the new expiry. No check waits longer
  than `ws_session_check_s`, which bounds a session shortened by someone else;
- while revocations cannot be heard (the subscription dropped, or is not up yet) every session
  is checked every `POLL_S`, and once more when the subscription is back: whatever was
  published meanwhile was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from redis.asyncio import Redis
from starlette.websockets import WebSocket

from services.matcher.connection import Connection, Sent
from services.matcher.quota import SocketQuota, admit
from shared.domain.accounts import Accounts, token_hash
from shared.domain.handshake import Caller
from shared.infra.dependencies import DOWN
from shared.infra.listener import cancel_requested
from shared.settings import Settings
from shared.store.keys import Keys

log = logging.getLogger("redline.matcher.sessions")

ENDED = (1008, "session ended")
POLL_S = 1.0  # without revocations: the promise is "ended within 1 s"
BATCH = 500
# Redis reports PTTL in whole ms: check just after the expiry, not a hair before it.
AFTER_EXPIRY_S = 0.005


Beat = Callable[[], Awaitable[None]]


class SessionWatch:
    def __init__(self, settings: Settings, state: Redis, keys: Keys, accounts: Accounts) -> None:
        self._state = state
        self._keys = keys
        self._accounts = accounts
        self._check_s = settings.ws_session_check_s
        self._queue_size = settings.ws_send_queue
        self._quota = SocketQuota(
            state, keys, settings.ws_max_sockets_per_user, settings.pool_ttl_s
        )
        self._period_s = max(1.0, settings.pool_ttl_s / 3)
        self._beats: list[tuple[str, Beat]] = [("socket count renewal", self._renew)]
        self._conns: dict[str, set[Connection]] = {}
        # Session key -> loop time of its next check; the heap may hold stale times (skipped).
        self._next: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self.live = False  # revocations are being heard
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="session-watch"),
            asyncio.create_task(
                self._accounts.listen(on_revoked=self.revoked, on_live=self.set_live),
                name="session revocations",
            ),
            asyncio.create_task(self._heartbeat(), name="matcher-heartbeat"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # A socket's registration -------------------------------------------------------------
    async def admit(
        self, ws: WebSocket, caller: Caller, sent: Sent | None = None
    ) -> Connection | None:
        """The authenticated caller's socket: its place taken in its user's cap (else the
        handshake is refused: 429, or 503), accepted, and watched; None when refused."""
        session = self._keys.session(token_hash(caller.token))
        conn = Connection(ws, caller.principal, session, self._queue_size, sent)
        if not await admit(ws, self._quota, conn.user_id, conn.sid):
            return None
        try:
            await ws.accept(subprotocol=caller.subprotocol)
        except BaseException:
            await self._quota.release(conn.user_id, conn.sid)
            raise
        self.add(conn)
        return conn

    async def release(self, conn: Connection) -> None:
        """The socket's session is over: stop watching it, drop its outbox and its place in the
        cap, and close it."""
        self.discard(conn)
        await conn.stop()
        await self._quota.release(conn.user_id, conn.sid)
        await conn.close()

    def connections(self) -> Iterator[Connection]:
        for conns in self._conns.values():
            yield from conns

    def __len__(self) -> int:
        return sum(len(c) for c in self._conns.values())

    def add(self, conn: Connection) -> None:
        conns = self._conns.setdefault(conn.session, set())
        conns.add(conn)
        if len(conns) == 1:
            # Checked at once: a logout between the handshake's resolve and now was not heard
            # by this socket (an ended session's sockets are forgotten, so this covers a second
            # socket of a session that just ended too).
            self._schedule(conn.session, 0.0)

    def discard(self, conn: Connection) -> None:
        conns = self._conns.get(conn.session)
        if conns is None:
            return
        conns.discard(conn)
        if not conns:
            del self._conns[conn.session]
            self._next.pop(conn.session, None)

    # What Accounts.listen hears ----------------------------------------------------------
    def revoked(self, token_hash: str) -> None:
        self._end(self._keys.session(token_hash))

    def set_live(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        if not live and not cancel_requested():  # (not at shutdown: nothing is wrong then)
            log.warning("session revocations unheard; checking sessions every %.0f s", POLL_S)
        # Either way: revocations may have been missed, look at every session now.
        for key in self._conns:
            self._schedule(key, 0.0)

    # Heartbeat -----------------------------------------------------------------------------
    def on_heartbeat(self, what: str, beat: Beat) -> None:
        """Run `beat` on every heartbeat too; `what` names it when it fails."""
        self._beats.append((what, beat))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._period_s)
            started = time.perf_counter()
            for what, beat in self._beats:
                try:
                    await beat()
                except DOWN as exc:
                    log.warning("%s failed", what, extra={"err": str(exc)})
            log.debug("heartbeat", extra={"s": round(time.perf_counter() - started, 3)})

    async def _renew(self) -> None:
        await self._quota.renew(list(self.connections()))  # a list: sockets come and go meanwhile

    # Checking ------------------------------------------------------------------------------
    def _end(self, key: str) -> None:
        self._next.pop(key, None)
        for conn in self._conns.pop(key, ()):
            conn.cut(*ENDED)

    def _schedule(self, key: str, at: float) -> None:
        self._next[key] = at
        heapq.heappush(self._heap, (at, key))
        if self._heap[0] == (at, key):
            self._wake.set()

    def _due(self, now: float) -> list[str]:
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if self._next.get(key) == at:
                del self._next[key]
                due.append(key)
        return due

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._due(loop.time())
            for i in range(0, len(due), BATCH):
                await self._check(due[i : i + BATCH])
            if due:
                continue
            self._wake.clear()
            timeout = self._heap[0][0] - loop.time() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _check(self, keys: list[str]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._state.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pttl(key)
                ttls = await pipe.execute()
        except DOWN as exc:
            log.warning("session check failed; retrying", extra={"err": str(exc)})
            ttls = [None] * len(keys)
        now = loop.time()
        longest = self._check_s if self.live else min(self._check_s, POLL_S)
        for key, ttl in zip(keys, ttls, strict=True):
            if key not in self._conns or key in self._next:
                continue  # its sockets left meanwhile, or it was rescheduled meanwhile
            if ttl is None:  # not known: Redis away (a socket then fails on its own anyway)
                self._schedule(key, now + min(longest, POLL_S))
            elif int(ttl) == -2:  # no such key: logged out or expired
                self._end(key)
            elif int(ttl) < 0:  # no expiry at all (not one of ours): look again later
                self._schedule(key, now + longest)
            else:
                self._schedule(key, now + min(longest, int(ttl) / 1000 + AFTER_EXPIRY_S))
