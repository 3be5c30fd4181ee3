"""A collab socket's sending side (services/api/rooms.py `Peer`), against a stand-in for the
socket that behaves as uvicorn's does: a send waits while the transport pushes back (uvicorn's
`writable` event), then writes at once. Frames go out in order, at once while the transport takes
them; behind a send that waits they queue, bounded; a full queue closes the socket (1008)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected

from services.api.rooms import SLOW, Peer


class Transport:
    """What a client would read off the socket, and a switch for the transport's push-back."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.frames: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.disconnected = False

    async def send_bytes(self, data: bytes) -> None:
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected
        self.frames.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.writable.wait()
        self.closed_with = (code, reason or "")


def peer_on(transport: Transport, queue: int = 8) -> tuple[Peer, asyncio.Task[None]]:
    peer = Peer(cast(WebSocket, transport), queue)
    return peer, asyncio.create_task(peer.drain())


async def settled(peer: Peer, task: asyncio.Task[Any]) -> None:
    await asyncio.wait_for(peer.closed.wait(), 5)
    await task


async def test_frames_go_out_at_once_and_in_order_while_the_transport_takes_them() -> None:
    transport = Transport()
    peer, writer = peer_on(transport)
    for frame in (b"a", b"b", b"c"):
        peer.send(frame)
    assert transport.frames == [b"a", b"b", b"c"]  # before any other task ran
    peer.stop(1000, "closed")
    await settled(peer, writer)
    assert transport.closed_with == (1000, "closed")


async def test_behind_a_send_that_waits_frames_queue_and_go_out_in_order() -> None:
    transport = Transport()
    peer, writer = peer_on(transport)
    peer.send(b"a")
    transport.writable.clear()  # the client stopped reading: the transport pushes back
    for frame in (b"b", b"c", b"d"):
        peer.send(frame)
    await asyncio.sleep(0.01)
    assert transport.frames == [b"a"]
    peer.stop(1000, "closed")
    transport.writable.set()
    await settled(peer, writer)
    assert transport.frames == [b"a", b"b", b"c", b"d"]
    assert transport.closed_with == (1000, "closed")
    # Once drained, a frame goes out at once again: here the socket is stopped, so not at all.
    peer.send(b"e")
    assert transport.frames[-1] == b"d"


async def test_the_backlog_drains_then_frames_go_out_at_once_again() -> None:
    transport = Transport()
    peer, writer = peer_on(transport)
    transport.writable.clear()
    peer.send(b"a")
    peer.send(b"b")
    transport.writable.set()
    for _ in range(100):
        if transport.frames == [b"a", b"b"]:
            break
        await asyncio.sleep(0.001)
    assert transport.frames == [b"a", b"b"]
    peer.send(b"c")
    assert transport.frames == [b"a", b"b", b"c"]  # at once: nothing queued before it
    peer.stop(1000, "closed")
    await settled(peer, writer)


async def test_a_reader_too_slow_is_closed_when_its_backlog_fills() -> None:
    transport = Transport()
    peer, writer = peer_on(transport, queue=3)
    transport.writable.clear()
    for i in range(10):
        peer.send(bytes([i]))
    assert peer.close_with == SLOW
    transport.writable.set()
    await settled(peer, writer)
    # The send that waited and the three queued behind it, then the close; nothing after.
    assert transport.frames == [bytes([i]) for i in range(4)]
    assert transport.closed_with == SLOW


async def test_a_client_gone_ends_the_writer_without_failing_the_sender() -> None:
    transport = Transport()
    peer, writer = peer_on(transport)
    transport.disconnected = True
    peer.send(b"a")  # raises nothing here: the relaying task is another socket's
    await settled(peer, writer)
    peer.send(b"b")
    assert transport.frames == []
    # Gone while a send waited: that send ends the writer too.
    transport = Transport()
    peer, writer = peer_on(transport)
    transport.writable.clear()
    peer.send(b"a")
    peer.send(b"b")
    transport.disconnected = True
    transport.writable.set()
    await settled(peer, writer)
    assert transport.frames == [] and transport.closed_with is None


async def test_a_writer_cancelled_while_a_send_waits_ends_cleanly() -> None:
    transport = Transport()
    peer, writer = peer_on(transport)
    transport.writable.clear()
    peer.send(b"a")
    await asyncio.sleep(0.01)
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    assert writer.cancelled() and peer.closed.is_set()
    peer.send(b"b")
    transport.writable.set()
    await asyncio.sleep(0.01)
    assert transport.frames == []
