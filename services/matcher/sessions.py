"""The session watcher: every local socket (match and events) registers here for its life.

`admit` takes the socket's place in its user's cap (services/matcher/quota.py; refused with 429
at the cap), accepts it and starts watching it; `release` undoes all three and closes it. The
heartbeat (every `pool_ttl_s / 3`) renews every socket's place in its cap, then runs the beats
an endpoint adds (`on_heartbeat`: the match endpoint refreshes its pool entries).

A socket lives no longer than the session it opened with, on every process: logout (heard by
pub/sub) and expiry (a per-session deadline, re-checked with one PTTL per session) end it with
1008 "session ended". That part, shared with the api's collab sockets, is
`shared.domain.sessions.SessionDeadlines`, which this class extends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from redis.asyncio import Redis
from starlette.websockets import WebSocket

from services.matcher.connection import Connection, Sent
from services.matcher.quota import SocketQuota, admit
from shared.domain.accounts import Accounts, token_hash
from shared.domain.handshake import Caller
from shared.domain.sessions import SessionDeadlines
from shared.infra.dependencies import DOWN
from shared.settings import Settings
from shared.store.keys import Keys

log = logging.getLogger("redline.matcher.sessions")

ENDED = (1008, "session ended")


Beat = Callable[[], Awaitable[None]]


class SessionWatch(SessionDeadlines[Connection]):
    def __init__(self, settings: Settings, state: Redis, keys: Keys, accounts: Accounts) -> None:
        super().__init__(state, keys, settings.ws_session_check_s, _cut, log)
        self._accounts = accounts
        self._queue_size = settings.ws_send_queue
        self._quota = SocketQuota(
            state, keys, settings.ws_max_sockets_per_user, settings.pool_ttl_s
        )
        self._period_s = max(1.0, settings.pool_ttl_s / 3)
        self._beats: list[tuple[str, Beat]] = [("socket count renewal", self._renew)]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.run(), name="session-watch"),
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
        return self.members()

    def add(self, conn: Connection) -> None:
        self.watch(conn.session, conn)

    def discard(self, conn: Connection) -> None:
        self.unwatch(conn.session, conn)

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


def _cut(conn: Connection) -> None:
    conn.cut(*ENDED)
