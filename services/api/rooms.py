"""The collab sockets this process holds, by document, and the relay between processes.

A socket's frames go out at once from the task relaying them while its transport takes them; one
whose transport pushes back gets a bounded backlog drained by its own task, so one slow reader
never holds up the others; a socket whose backlog fills is closed (1008, as the matcher does) and
resyncs when its client reconnects: nothing is lost, every update is in the document's log.

Across processes: the append script publishes each stored update on the document's channel
("<origin> <log id> <update>"), unless this process is the channel's one subscriber, and
awareness frames go the same way ("<origin> a <frame>"):
published by awareness_set.lua once stored, or by `share_awareness` (a partial frame, a closed
socket's null states).
Each process subscribes the channels of the documents it has sockets on, through one pub/sub
connection read by a `Listener`, and relays what other processes' sockets sent (its own were
relayed at once). Pub/sub loses what is published while the connection is down, so when it is
back every room here gets its document's whole stored state as one update: Yjs applies only what
a client lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from redis.asyncio import Redis
from starlette.websockets import WebSocket, WebSocketDisconnect

from shared.domain import collab
from shared.infra.dependencies import REDIS_DOWN
from shared.infra.fanout import Fanout
from shared.store.keys import Keys

log = logging.getLogger("redline.collab")

SLOW = (1008, "too slow to keep up: reconnect to resync")
# A send's errors when its client went away (uvicorn's ClientDisconnected is an OSError).
GONE = (WebSocketDisconnect, RuntimeError, OSError)
AWARENESS = b"a"

# The document's whole stored state, framed as one update (after a lost subscription).
Resync = Callable[[str], Awaitable[bytes]]


class Peer:
    """The sending side of one collab socket.

    A frame goes out at once, from the task relaying it, when nothing is queued before it and
    the transport takes it without waiting: the usual case, where uvicorn's send returns without
    ever suspending, so a relay costs no task switch a socket. A send that must wait (the
    transport pushes back) is finished by the socket's writer task (`drain`), and what follows
    it queues behind it there: one slow reader never holds up the relaying task nor the others,
    and one whose backlog fills is closed (SLOW)."""

    def __init__(self, ws: WebSocket, queue: int) -> None:
        self.ws = ws
        self._loop = asyncio.get_running_loop()
        self._limit = queue
        self._backlog: deque[bytes] = deque()
        self._waiting: _Resumed | None = None  # a send that suspended, for `drain` to finish
        self._draining = False  # `drain` is sending: everything goes through the backlog
        self._wake = asyncio.Event()
        self._gone = False
        self.close_with: tuple[int, str] | None = None
        self.closed = asyncio.Event()
        self.sent_at = self._loop.time()

    def send(self, frame: bytes) -> None:
        if self.close_with is not None or self._gone:
            return
        if self._waiting is not None or self._draining or self._backlog:
            if len(self._backlog) >= self._limit:
                self.stop(*SLOW)
            else:
                self._backlog.append(frame)
                self._wake.set()
            return
        sending = self.ws.send_bytes(frame)
        try:
            waits_for = sending.send(None)
        except StopIteration:
            self.sent_at = self._loop.time()
            return
        except GONE:
            self._went_away()
            return
        except Exception:  # this socket's failure, not the relaying task's
            log.exception("collab send failed")
            self._went_away()
            return
        self._waiting = _Resumed(sending, waits_for)
        self._wake.set()

    def stop(self, code: int, reason: str) -> None:
        """Close the socket once what is queued has gone out; the first reason wins."""
        if self.close_with is None:
            self.close_with = (code, reason)
            self._wake.set()

    def _went_away(self) -> None:
        self._gone = True  # the client went away: nothing left to send to
        self._wake.set()

    async def drain(self) -> None:
        """Finish a send that had to wait and send the backlog behind it, until the socket is
        stopped or goes away; then close it."""
        try:
            while not self._gone:
                await self._wake.wait()
                self._wake.clear()
                self._draining = True
                if self._waiting is not None:
                    await self._waiting
                    self._waiting = None
                    self.sent_at = self._loop.time()
                while self._backlog and not self._gone:
                    await self.ws.send_bytes(self._backlog.popleft())
                    self.sent_at = self._loop.time()
                self._draining = False
                if self.close_with is not None and not self._gone:
                    code, reason = self.close_with
                    await self.ws.close(code, reason)
                    return
        except GONE:
            pass  # the client went away: nothing left to send to
        finally:
            self._gone = True
            if self._waiting is not None:
                self._waiting.close()
            self.closed.set()


class _Resumed:
    """Awaiting it finishes, in the awaiting task, a coroutine another task started and that
    suspended on `waits_for` (what it yielded: the future it waits on)."""

    __slots__ = ("_coro", "_waits_for")

    def __init__(self, coro: Coroutine[Any, Any, None], waits_for: Any) -> None:
        self._coro = coro
        self._waits_for = waits_for

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waits_for = self._coro, self._waits_for
        while True:
            try:
                sent = yield waits_for
            except BaseException as exc:  # a cancel, or the future's error: the coroutine's own
                try:
                    waits_for = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waits_for = coro.send(sent)
                except StopIteration:
                    return

    def close(self) -> None:
        self._coro.close()


class Rooms:
    def __init__(self, subscriber: Redis, keys: Keys, process: str, resync: Resync) -> None:
        """`subscriber`: a binary `pubsub_client`, closed by `stop`."""
        self._keys = keys
        self._process = process.encode()
        self._resync = resync
        self._doc_of: dict[str, str] = {}
        # This process's own channel, nobody publishes on it: subscribed while the pub/sub
        # connection is up, which the append script reads to tell whether another process
        # listens on a document's channel (`UpdateLog.append`'s own_relay).
        self.control = keys.collab_channel(f"-{process}")
        self._fanout: Fanout[Peer] = Fanout(
            subscriber,
            "collab relay",
            self.control,
            self._message,
            self._resync_all,
        )

    async def start(self) -> None:
        await self._fanout.start()

    async def stop(self) -> None:
        await self._fanout.stop()

    async def join(self, doc_id: str, peer: Peer) -> None:
        """Hear the document's channel before the socket syncs, so no update from another
        process is missed; a subscription Redis does not confirm fails the socket (1013)."""
        channel = self._keys.collab_channel(doc_id)
        self._doc_of[channel] = doc_id
        if not await self._fanout.join(channel, peer):
            raise ConnectionError(f"the relay of document {doc_id} is not subscribed")

    async def leave(self, doc_id: str, peer: Peer) -> None:
        channel = self._keys.collab_channel(doc_id)
        await self._fanout.leave(channel, peer)
        if channel not in self._fanout.channels():
            self._doc_of.pop(channel, None)

    def relay(self, doc_id: str, frame: bytes) -> None:
        """`frame` to every socket of the document here, the sender's included (its client
        ignores its own updates; y-websocket's server echoes them too)."""
        for peer in self._fanout.members(self._keys.collab_channel(doc_id)):
            peer.send(frame)

    async def share_awareness(self, doc_id: str, origin: str, frame: bytes) -> None:
        """An awareness frame to this process's sockets and, through the channel, the others'."""
        self.relay(doc_id, frame)
        payload = origin.encode() + b" " + AWARENESS + b" " + frame
        with contextlib.suppress(*REDIS_DOWN):  # cursors are best effort: never persisted
            await self._fanout.publish(self._keys.collab_channel(doc_id), payload)

    async def _message(self, channel: str, data: Any) -> None:
        doc_id = self._doc_of.get(channel)
        if doc_id is None or not isinstance(data, bytes):
            return
        origin, _, rest = data.partition(b" ")
        if origin.partition(b":")[0] == self._process:
            return  # one of ours: relayed when it was stored or sent
        kind, _, frame = rest.partition(b" ")
        if kind == AWARENESS:
            self.relay(doc_id, frame)
        else:
            self.relay(doc_id, collab.encode(collab.Update(frame)))

    async def _resync_all(self) -> None:
        for doc_id in tuple(self._doc_of.values()):
            try:
                self.relay(doc_id, await self._resync(doc_id))
            except REDIS_DOWN as exc:
                log.warning("collab resync failed", extra={"doc": doc_id, "err": str(exc)})
