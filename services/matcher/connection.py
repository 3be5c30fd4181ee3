"""One matcher WebSocket: who it is, its pool entry, and a bounded outbox of frames to send.

Everything sent to the socket goes through the outbox and one writer task, so replies and
deliveries from the pub/sub listener never interleave, and a client that stops reading costs at
most `ws_send_queue` frames of memory before it is cut off. The writer task exists only while
there is something to send: an idle socket holds no task of its own (memory per socket is a
target: 10,000 idle sockets on one process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.websockets import WebSocket

from services.matcher.messages import ErrorMsg
from services.matcher.pool import PoolEntry
from shared.domain.accounts import Principal
from shared.settings import Settings

SLOW_CLIENT = (1008, "too slow: send queue full")
IDLE = (1000, "idle timeout")

# Called once a frame that was waiting in the user's inbox has been sent: (user id, entry id).
Sent = Callable[[str, str], Awaitable[None]]

log = logging.getLogger("redline.matcher")


class Connection:
    __slots__ = (
        "_deadline",
        "_limit",
        "_outbox",
        "_sent",
        "_writer",
        "close_with",
        "entry",
        "in_pool",
        "language",
        "principal",
        "session",
        "sid",
        "ws",
    )

    def __init__(
        self,
        ws: WebSocket,
        principal: Principal,
        language: str,
        entry: PoolEntry,
        queue_size: int,
        sent: Sent,
        session: str,
    ) -> None:
        self.ws = ws
        self.principal = principal
        # The session's Redis key: a socket lives no longer than the session it opened with.
        self.session = session
        # This socket's entry in its user's socket count (services/matcher/quota.py).
        self.sid = secrets.token_hex(8)
        self.language = language
        self.entry = entry
        # True while this connection's ticket should own an entry in the pool.
        self.in_pool = False
        self.close_with: tuple[int, str] | None = None
        self._limit = queue_size
        self._outbox: deque[tuple[str, str | None]] = deque()
        self._sent = sent
        self._writer: asyncio.Task[None] | None = None
        self._deadline: asyncio.Timeout | None = None

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def ticket(self) -> str:
        return self.entry.ticket

    def push(self, message: BaseModel, inbox_id: str | None = None) -> bool:
        """Queue a frame; a full outbox means the client is not reading: cut it off."""
        if self.close_with is not None:
            return False
        if len(self._outbox) >= self._limit:
            self.cut(*SLOW_CLIENT)
            return False
        self._outbox.append((message.model_dump_json(), inbox_id))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write())
        return True

    def cut(self, code: int, reason: str) -> None:
        """Make the receive loop end now and close with this code."""
        if self.close_with is None:
            self.close_with = (code, reason)
        if self._deadline is not None:
            self._deadline.reschedule(asyncio.get_running_loop().time())

    def watch(self, deadline: asyncio.Timeout | None) -> None:
        """The receive loop's current deadline (None between receives), for `cut` to expire."""
        self._deadline = deadline

    async def _write(self) -> None:
        try:
            while self._outbox and self.close_with is None:
                text, inbox_id = self._outbox[0]
                await self.ws.send_text(text)
                self._outbox.popleft()
                if inbox_id is not None:
                    await self._sent(self.user_id, inbox_id)
        except Exception as exc:  # the socket is gone or broken: end the session
            log.debug("send failed", extra={"user": self.user_id, "err": repr(exc)})
            self.cut(1011, "send failed")
        finally:
            self._writer = None

    async def stop(self) -> None:
        """Drop what is still queued; used once the session is over."""
        self._outbox.clear()
        writer = self._writer
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer


async def receive_loop(
    conn: Connection, limits: Settings, handle: Callable[[Connection, str], Awaitable[None]]
) -> None:
    """Read text frames and hand each to `handle` until the client leaves, idles out, or the
    connection is cut (`close_with` set). Shared by the match and events sockets."""
    idle = limits.ws_idle_timeout_s
    limit = limits.ws_max_message_bytes
    while conn.close_with is None:
        try:
            async with asyncio.timeout(idle) as deadline:
                conn.watch(deadline)
                message = await conn.ws.receive()
        except TimeoutError:
            conn.close_with = conn.close_with or IDLE
            return
        finally:
            conn.watch(None)
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            conn.push(ErrorMsg(detail="send JSON text frames"))
            continue
        if len(text) > limit and len(text.encode()) > limit:
            # The server enforces this before us (ws_max_size); this covers any other server.
            conn.close_with = (1009, "message too big")
            return
        await handle(conn, text)


M = TypeVar("M")


def parse(conn: Connection, adapter: TypeAdapter[M], text: str) -> M | None:
    """A client frame as its message, or None once the client has been told what is wrong."""
    try:
        return adapter.validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        conn.push(ErrorMsg(detail=f"invalid message: {where}: {first['msg']}"))
        return None
