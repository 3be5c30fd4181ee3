"""A small asyncio TCP fault proxy for fault tests: services connect to the proxy's port instead of
the server's, and the test switches what the proxy does to their traffic.

Modes:
- `pass`: bytes flow both ways untouched (optionally `latency_s` later, each direction);
- `blackhole`: new connections are accepted and then never answered, and open connections stop
  forwarding (a network partition: clients see timeouts, not errors);
- `refuse`: new connections are closed at once, open ones are cut (a server that is gone);
- `reset`: every open connection is reset (RST), new ones are reset as they arrive.

Switching mode applies to open connections too: `blackhole` and `refuse`/`reset` cut or stall
the live ones, so a pooled client cannot keep talking through a "dead" proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "blackhole", "refuse", "reset"]
CHUNK = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: SO_LINGER on, timeout 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def cut(self, *, rst: bool) -> None:
        for writer in (self.client, self.server):
            if writer is None:
                continue
            if rst:
                _reset(writer)
            else:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cut(rst=False)
        self._pipes.clear()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def set(self, mode: Mode, *, latency_s: float = 0.0) -> None:
        """Switch mode; open connections follow at once (see the module docstring)."""
        self.mode, self.latency_s = mode, latency_s
        if mode == "blackhole":
            self._flowing.clear()
            return
        if mode in ("refuse", "reset"):
            for pipe in list(self._pipes):
                pipe.cut(rst=mode == "reset")
            self._pipes.clear()
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            writer.transport.abort()
            return
        if self.mode == "reset":
            _reset(writer)
            return
        pipe = _Pipe(writer)
        self._pipes.add(pipe)
        try:
            # A blackholed connection is accepted and then left waiting, like a partition.
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except (OSError, asyncio.CancelledError):
            pipe.cut(rst=False)
            self._pipes.discard(pipe)
            return
        pipe.server = up_writer
        pipe.tasks = [
            asyncio.create_task(self._copy(reader, up_writer)),
            asyncio.create_task(self._copy(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pipe.cut(rst=False)
            self._pipes.discard(pipe)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._flowing.wait()
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            return


@asynccontextmanager
async def fault_proxy(target_host: str, target_port: int) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
