"""The collab sockets this process holds, by document, and the relay between processes.

A socket's frames go out through a bounded queue drained by its own task, so one slow reader
never holds up the others; a socket whose queue fills is closed (1008, as the matcher does) and
resyncs when its client reconnects: nothing is lost, every update is in the document's log.

Across processes: the append script publishes each stored update on the document's channel
("<origin> <log id> <update>"), and awareness frames go the same way ("<origin> a <frame>").
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
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from starlette.websockets import WebSocket, WebSocketDisconnect

from shared.domain import collab
from shared.infra.dependencies import REDIS_DOWN
from shared.infra.fanout import Fanout
from shared.store.keys import Keys

log = logging.getLogger("redline.collab")

SLOW = (1008, "too slow to keep up: reconnect to resync")
AWARENESS = b"a"

# The document's whole stored state, framed as one update (after a lost subscription).
Resync = Callable[[str], Awaitable[bytes]]


class Peer:
    """The sending side of one collab socket."""

    def __init__(self, ws: WebSocket, queue: int) -> None:
        self.ws = ws
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(queue)
        self.close_with: tuple[int, str] | None = None
        self.closed = asyncio.Event()
        self.sent_at = asyncio.get_running_loop().time()

    def send(self, frame: bytes) -> None:
        if self.close_with is not None:
            return
        try:
            self._outbox.put_nowait(frame)
        except asyncio.QueueFull:
            self.stop(*SLOW)

    def stop(self, code: int, reason: str) -> None:
        """Close the socket once what is queued has gone out; the first reason wins."""
        if self.close_with is None:
            self.close_with = (code, reason)
            with contextlib.suppress(asyncio.QueueFull):
                self._outbox.put_nowait(b"")

    async def drain(self) -> None:
        """Send the outbox until the socket is stopped or goes away."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                frame = await self._outbox.get()
                if not frame:
                    break
                await self.ws.send_bytes(frame)
                self.sent_at = loop.time()
            if self.close_with is not None:
                code, reason = self.close_with
                await self.ws.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client went away: nothing left to send to
        finally:
            self.closed.set()


class Rooms:
    def __init__(self, subscriber: Redis, keys: Keys, process: str, resync: Resync) -> None:
        """`subscriber`: a binary `pubsub_client`, closed by `stop`."""
        self._keys = keys
        self._process = process.encode()
        self._resync = resync
        self._doc_of: dict[str, str] = {}
        self._fanout: Fanout[Peer] = Fanout(
            subscriber,
            "collab relay",
            keys.collab_channel(f"-{process}"),
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
