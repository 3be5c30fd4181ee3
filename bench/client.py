"""A small HTTP/1.1 keep-alive client on asyncio protocols, for the load generator.

No task, future or header dict per request: a request is bytes prepared in advance, written to an
idle connection; the response is framed by its Content-Length and reported to a listener with its
status. That keeps the generator's cost per request in the tens of microseconds, so one core drives
thousands of requests a second while the servers use the other.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

MAX_HEAD = 64 * 1024


class Listener(Protocol):
    def response(self, conn: Connection, status: int) -> None: ...

    def lost(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = -1  # bytes of the current response (head + body), once its head is parsed
        self._status = 0
        self._close_after = False
        self.closed = False
        self.in_flight = False
        self.got_bytes = False  # any byte of the current response seen (a retry is then unsafe)
        self.request = b""
        self.started = 0.0  # the time latency is measured from (perf_counter seconds)
        self.retried = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, started: float, retried: bool = False) -> None:
        assert self._transport is not None and not self.in_flight
        self.request, self.started, self.retried = request, started, retried
        self.in_flight, self.got_bytes = True, False
        self._transport.write(request)

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self.closed = True
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        buf = self._buf
        buf += data
        while buf:
            if self._need < 0 and not self._parse_head():
                return
            if len(buf) < self._need:
                return
            del buf[: self._need]
            self._need = -1
            self.in_flight = False
            if self._close_after:
                self.close()
            self._listener.response(self, self._status)

    def _parse_head(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._broken()
            return False
        head = bytes(buf[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        try:
            status = int(head[9:12])
            if at < 0:
                raise ValueError("no content-length (chunked bodies are not supported)")
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop > 0 else len(head)])
        except ValueError:
            self._broken()
            return False
        self._status = status
        self._close_after = b"\r\nconnection: close" in head
        self._need = end + 4 + length
        return True

    def _broken(self) -> None:
        self._buf.clear()
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._listener.lost(self)


CONNECT_TIMEOUT_S = 5.0


async def connect(host: str, port: int, listener: Listener) -> Connection:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        _, conn = await loop.create_connection(lambda: Connection(listener), host, port)
    return conn


def now() -> float:
    return time.perf_counter()
