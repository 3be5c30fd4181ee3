"""The co-editing load client (bench/collab.py): one pycrdt editor per socket, the same for every
system; only the framing differs.

- Redline (`/v1/collab/{id}`, bearer token in Authorization) and y-websocket 2.1's server
  (`/<document name>`) speak plain y-websocket: one y-protocols message per binary frame.
- Hocuspocus 4.7 prefixes every message with varString(document name), wants an Auth message
  (type 2, Token 0, varString token) before anything else, answers it with Authenticated (2, 2),
  may send sync messages as type 4 (SyncReply, the same body) and acknowledges each applied
  update with type 8 (SyncStatus).

An editor types one ASCII character per keystroke (pycrdt offsets are UTF-8 bytes: ASCII keeps
them equal to characters), so its Yjs clock grows by one a keystroke; an editor receiving an
update reads its document's state vector to tell which keystrokes of which co-editor it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.domain import collab

HOCUSPOCUS_SYNC_REPLY, HOCUSPOCUS_AUTH, HOCUSPOCUS_SYNC_STATUS = 4, 2, 8
AUTH_TOKEN, AUTH_PERMISSION_DENIED, AUTH_AUTHENTICATED = 0, 1, 2


def var_uint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_var_uint(buf: bytes, at: int) -> tuple[int, int]:
    """The varUint at `at` and the offset after it."""
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def var_string(value: str) -> bytes:
    raw = value.encode()
    return var_uint(len(raw)) + raw


def state_vector(encoded: bytes) -> dict[int, int]:
    """Client id -> next clock, from an encoded state vector."""
    count, at = read_var_uint(encoded, 0)
    out: dict[int, int] = {}
    for _ in range(count):
        client, at = read_var_uint(encoded, at)
        out[client], at = read_var_uint(encoded, at)
    return out


def frame_bytes(payload: int, masked: bool) -> int:
    """A WebSocket frame's size on the wire: header (RFC 6455 5.2) plus payload."""
    size = 2 + payload + (4 if masked else 0)
    if payload >= 65536:
        return size + 8
    return size + 2 if payload >= 126 else size


class Framing(Protocol):
    def url(self, base: str, doc: str) -> str: ...
    def hello(self, doc: str, token: str) -> list[bytes]: ...
    def wrap(self, doc: str, message: bytes) -> bytes: ...
    def unwrap(self, frame: bytes) -> bytes | None: ...


class YWebsocket:
    """Plain y-websocket framing (y-websocket's own server)."""

    def url(self, base: str, doc: str) -> str:
        return f"{base}/{doc}"

    def hello(self, doc: str, token: str) -> list[bytes]:
        return []

    def wrap(self, doc: str, message: bytes) -> bytes:
        return message

    def unwrap(self, frame: bytes) -> bytes | None:
        return frame


class Redline(YWebsocket):
    def url(self, base: str, doc: str) -> str:
        return f"{base}/v1/collab/{doc}"


class Hocuspocus(YWebsocket):
    def hello(self, doc: str, token: str) -> list[bytes]:
        return [var_string(doc) + bytes((HOCUSPOCUS_AUTH, AUTH_TOKEN)) + var_string(token)]

    def wrap(self, doc: str, message: bytes) -> bytes:
        return var_string(doc) + message

    def unwrap(self, frame: bytes) -> bytes | None:
        size, at = read_var_uint(frame, 0)
        at += size  # the document name: one document a socket here
        kind = frame[at]
        if kind == HOCUSPOCUS_SYNC_REPLY:
            return bytes((collab.SYNC,)) + frame[at + 1 :]
        if kind == HOCUSPOCUS_AUTH and frame[at + 1] == AUTH_PERMISSION_DENIED:
            raise ConnectionError("hocuspocus denied the token")
        if kind in (collab.SYNC, collab.AWARENESS, collab.QUERY_AWARENESS):
            return frame[at:]
        return None  # Authenticated, SyncStatus acks, pings


FRAMINGS: dict[str, Framing] = {
    "redline": Redline(),
    "hocuspocus": Hocuspocus(),
    "y-websocket": YWebsocket(),
}


@dataclass
class Wire:
    """Bytes on the sockets (frame headers included) while `counting`."""

    counting: bool = False
    sent: int = 0
    received: int = 0

    def send(self, size: int) -> None:
        if self.counting:
            self.sent += frame_bytes(size, masked=True)

    def receive(self, size: int) -> None:
        if self.counting:
            self.received += frame_bytes(size, masked=False)


@dataclass
class Room:
    """The editors of one document, and what each has typed: (clock after it, when)."""

    editors: list[Editor] = field(default_factory=list)
    by_client: dict[int, Editor] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    # When each of those keystrokes was typed (perf_counter), for --collab-trace's timeline.
    typed_at: list[float] = field(default_factory=list)

    def add(self, editor: Editor) -> None:
        self.editors.append(editor)
        self.by_client[editor.doc.client_id] = editor

    def applied(self, receiver: Editor) -> None:
        """`receiver` applied an update: time every co-editor's keystroke it now holds (its
        document's state vector, not the update's: alone, a keystroke that follows earlier ones
        of its author has unmet dependencies, and an empty state vector)."""
        now = time.perf_counter()
        for client, clock in state_vector(receiver.doc.get_state()).items():
            author = self.by_client.get(client)
            if author is None or author is receiver:
                continue
            seen = receiver.seen.get(client, 0)
            typed = author.typed
            while seen < len(typed) and typed[seen][0] <= clock:
                self.latencies_ms.append((now - typed[seen][1]) * 1000)
                self.typed_at.append(typed[seen][1])
                seen += 1
            receiver.seen[client] = seen


class Editor:
    """A pycrdt document synced over one socket."""

    def __init__(
        self,
        ws: ClientConnection,
        framing: Framing,
        name: str,
        wire: Wire,
        room: Room,
        state: bytes | None,
    ) -> None:
        self.ws = ws
        self.framing = framing
        self.name = name
        self.wire = wire
        self.room = room
        self.doc, self.text = collab.new_doc(state)
        self.synced = asyncio.Event()
        self.typed: list[tuple[int, float]] = []
        self.clock = 0  # this editor's Yjs clock: a fresh client starts at 0
        self.seen: dict[int, int] = {}  # co-editor's client id -> keystrokes of theirs applied
        self.cursor = 0
        self.error: BaseException | None = None
        self.on_text: Callable[[], None] = lambda: None
        self._reader = asyncio.create_task(self._read(), name="collab editor")

    async def send(self, message: bytes) -> None:
        frame = self.framing.wrap(self.name, message)
        self.wire.send(len(frame))
        await self.ws.send(frame)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if not isinstance(frame, bytes):
                    raise ConnectionError(f"a text frame: {frame[:80]!r}")
                self.wire.receive(len(frame))
                message = self.framing.unwrap(frame)
                if message is not None:
                    await self._handle(collab.parse(message))
        except ConnectionClosed:
            pass
        except Exception as exc:  # reported by the scenario, which owns the editors
            self.error = exc

    async def _handle(self, msg: collab.Message) -> None:
        if isinstance(msg, collab.SyncStep1):
            await self.send(collab.encode(collab.SyncStep2(self.doc.get_update(msg.state_vector))))
        elif isinstance(msg, collab.SyncStep2 | collab.Update):
            if msg.update != collab.EMPTY_UPDATE:
                self.doc.apply_update(msg.update)
                self.room.applied(self)
                self.on_text()
            if isinstance(msg, collab.SyncStep2):
                self.synced.set()

    async def start(self, token: str) -> None:
        for hello in self.framing.hello(self.name, token):
            self.wire.send(len(hello))
            await self.ws.send(hello)
        await self.send(collab.encode(collab.SyncStep1(self.doc.get_state())))

    async def type(self, char: str) -> None:
        """One keystroke at the cursor (ASCII: one byte, one Yjs clock tick)."""
        at = min(self.cursor, len(self.text))
        before = self.doc.get_state()
        self.text.insert(at, char)
        update = self.doc.get_update(before)
        self.cursor = at + 1
        self.clock += 1
        self.typed.append((self.clock, time.perf_counter()))
        await self.send(collab.encode(collab.Update(update)))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 5)
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def open_editor(
    system: str,
    base: str,
    name: str,
    token: str,
    wire: Wire,
    room: Room,
    state: bytes | None = None,
) -> Editor:
    framing = FRAMINGS[system]
    headers = {"Authorization": f"Bearer {token}"} if system == "redline" else {}
    ws = await connect(
        framing.url(base, name),
        additional_headers=headers,
        max_size=None,
        compression=None,  # none of the servers compresses by default
        open_timeout=30,
        ping_interval=None,  # the protocols' own messages keep the sockets alive
    )
    editor = Editor(ws, framing, name, wire, room, state)
    room.add(editor)
    await editor.start(token)
    return editor
