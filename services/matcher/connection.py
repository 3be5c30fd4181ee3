"""One matcher WebSocket: who it is, its pool entry, and a bounded queue of frames to send.

Everything sent to the socket goes through the queue and one writer task, so replies and
deliveries from the pub/sub listener never interleave, and a client that stops reading costs at
most `ws_send_queue` frames of memory before it is cut off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from starlette.websockets import WebSocket

from shared.accounts import Principal
from shared.scripts import PoolEntry

SLOW_CLIENT = (1008, "too slow: send queue full")
IDLE = (1000, "idle timeout")

Sent = Callable[[str, str], Awaitable[None]]


class Connection:
    def __init__(
        self,
        ws: WebSocket,
        principal: Principal,
        language: str,
        entry: PoolEntry,
        queue_size: int,
    ) -> None:
        self.ws = ws
        self.principal = principal
        self.language = language
        self.entry = entry
        # True while this connection's ticket should own an entry in the pool.
        self.in_pool = False
        self.queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue(queue_size)
        self.close_with: tuple[int, str] | None = None
        self._deadline: asyncio.Timeout | None = None

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    @property
    def ticket(self) -> str:
        return self.entry.ticket

    def push(self, message: BaseModel, inbox_id: str | None = None) -> bool:
        """Queue a frame; a full queue means the client is not reading: cut it off."""
        if self.close_with is not None:
            return False
        try:
            self.queue.put_nowait((message.model_dump_json(), inbox_id))
        except asyncio.QueueFull:
            self.cut(*SLOW_CLIENT)
            return False
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

    async def write(self, sent: Sent) -> None:
        """The writer task: send queued frames in order; `sent` acknowledges inbox entries."""
        while True:
            text, inbox_id = await self.queue.get()
            await self.ws.send_text(text)
            if inbox_id is not None:
                await sent(self.user_id, inbox_id)
