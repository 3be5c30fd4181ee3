"""Replica waits shared by concurrent callers: one `Scripts.wait_replicas` round (a mark, then
`WAIT`) answers every caller whose write completed before the round's mark was written.

A co-editing socket acknowledges each update by relaying it, at keystroke rate from many sockets;
a mark and a WAIT each would double the primary's write rate and queue WAITs behind each other.
Replicas apply the replication stream in order, so once the mark is on `n` replicas, so is every
write made before it, on any connection. A caller arriving while a round is in flight may have
written after that round's mark, so it joins the next round, which starts when this one ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class ReplicaWaits:
    def __init__(self, wait: Callable[[], Awaitable[int]]) -> None:
        """`wait`: one round: write a mark and WAIT for it; the replicas that hold it."""
        self._wait = wait
        self._next: asyncio.Future[int] | None = None
        self._rounds: asyncio.Task[None] | None = None

    async def replicas(self) -> int:
        """How many replicas hold every write this caller completed before calling."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        joined = self._next
        if self._rounds is None or self._rounds.done():
            self._rounds = asyncio.create_task(self._run(), name="replica waits")
        # Shielded: one caller going away must not cancel the round the others wait on.
        return await asyncio.shield(joined)

    async def _run(self) -> None:
        while self._next is not None:
            round_, self._next = self._next, None
            try:
                acked = await self._wait()
            except Exception as exc:  # a store down: every caller of this round hears it
                round_.set_exception(exc)
                round_.exception()  # retrieved: callers that went away leave no warning
            else:
                round_.set_result(acked)
            finally:
                if not round_.done():  # this task cancelled (a shutdown): nobody waits forever
                    round_.cancel()
