"""The collab sockets this process holds, by document: each socket's outbox, and the relay of
one frame to every socket of a document.

A socket's frames go out through a bounded queue drained by its own task, so one slow reader
never holds up the relay to the others; a socket whose queue fills is closed (1008, as the
matcher does) and resyncs when its client reconnects: nothing is lost, every update is in the
document's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

log = logging.getLogger("redline.collab")

SLOW = (1008, "too slow to keep up: reconnect to resync")


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
    def __init__(self) -> None:
        self._rooms: dict[str, set[Peer]] = {}

    def join(self, doc_id: str, peer: Peer) -> None:
        self._rooms.setdefault(doc_id, set()).add(peer)

    def leave(self, doc_id: str, peer: Peer) -> None:
        peers = self._rooms.get(doc_id)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del self._rooms[doc_id]

    def relay(self, doc_id: str, frame: bytes) -> None:
        """`frame` to every socket of the document here, the sender's included (its client
        ignores its own updates; y-websocket's server echoes them too)."""
        for peer in tuple(self._rooms.get(doc_id, ())):
            peer.send(frame)

    @property
    def sockets(self) -> int:
        return sum(len(p) for p in self._rooms.values())
