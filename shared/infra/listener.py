"""The one loop every subscriber runs: pub/sub channels and stream readers alike.

A listener's `session` subscribes (or starts reading) and reads until its connection fails.
`Listener.run` runs it forever: on a failure it logs once per outage, tells the owner (`on_down`),
waits with exponential backoff and starts a new session; the session calls `up()` once it is
subscribed, which resets the backoff and tells the owner (`on_up`). Cancellation always ends it,
even where redis-py swallows the cancel (see `cancel_requested`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shared.infra.dependencies import DOWN

log = logging.getLogger("redline.listener")


def cancel_requested() -> bool:
    """True when the current task has been asked to stop.

    A read loop must check this after each read and in its error handler: redis-py's
    `get_message(timeout=...)` can swallow a cancel that lands as its read times out (it answers
    None, or a TimeoutError, an OSError, that a retrying loop catches), and the loop would then
    never end: a lifespan waiting for it hangs at shutdown."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class Listener:
    def __init__(
        self,
        name: str,
        *,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[], None] | None = None,
        first_delay_s: float = 0.1,
        max_delay_s: float = 2.0,
    ) -> None:
        self.name = name
        self._on_up = on_up
        self._on_down = on_down
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.live = False
        self.outages = 0

    def up(self) -> None:
        """The session is subscribed (or a read came back): the source is live."""
        if not self.live:
            self.live = True
            if self.outages:
                log.info("%s reconnected", self.name)
            if self._on_up is not None:
                self._on_up()

    @staticmethod
    def check() -> None:
        """Call after every read: ends the session when the task is being cancelled."""
        if cancel_requested():
            raise asyncio.CancelledError

    async def run(self, session: Callable[[], Awaitable[None]]) -> None:
        delay = self.first_delay_s
        try:
            while True:
                try:
                    await session()
                    raise ConnectionError(f"{self.name} ended its session")
                except Exception as exc:  # whatever it was, the listener must come back
                    if cancel_requested():
                        raise asyncio.CancelledError from exc
                    if self.live:
                        delay = self.first_delay_s
                    self._lost(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.max_delay_s)
        finally:
            self._down()

    def _lost(self, exc: Exception) -> None:
        if not isinstance(exc, DOWN):
            log.error("%s failed; restarting it", self.name, exc_info=exc)
        elif self.live or not self.outages:
            log.warning("%s lost its connection (%r); reconnecting", self.name, exc)
        if self.live or not self.outages:
            self.outages += 1
        self._down()

    def _down(self) -> None:
        if self.live:
            self.live = False
            if self._on_down is not None:
                self._on_down()
