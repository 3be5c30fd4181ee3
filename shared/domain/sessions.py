"""A socket lives no longer than the session it opened with: the watch every service with
sockets shares (the matcher's match and events sockets, the api's collab sockets).

Each member (a socket) is held under its session's Redis key; `end` is called once for each
member of a session that ended:

- logout: `Accounts.close_session` publishes the token's hash; `Accounts.listen` hands it to
  `revoked`, which ends that session's members here at once;
- expiry: each session has a next-check time, its known expiry (sessions slide on every resolve,
  so reaching it means "look again", not "over"); at that time one PTTL per session (not per
  socket) either finds it gone (end its members) or learns the new expiry. No check waits longer
  than `check_s`, which bounds a session shortened by someone else;
- while revocations cannot be heard (`set_live(False)`: the subscription dropped, or is not up
  yet) every session is checked every `POLL_S`, and once more when the subscription is back:
  whatever was published meanwhile was lost.

`run` does the checking, as a task for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

from redis.asyncio import Redis

from shared.infra.dependencies import DOWN
from shared.infra.listener import cancel_requested
from shared.store.keys import Keys

POLL_S = 1.0  # without revocations: the promise is "ended within 1 s"
BATCH = 500
# Redis reports PTTL in whole ms: check just after the expiry, not a hair before it.
AFTER_EXPIRY_S = 0.005

M = TypeVar("M", bound=Hashable)


class SessionDeadlines(Generic[M]):
    def __init__(
        self,
        state: Redis,
        keys: Keys,
        check_s: float,
        end: Callable[[M], None],
        log: logging.Logger,
    ) -> None:
        """`end(member)` for each member of a session that ended; `log` the owner's logger."""
        self._log = log
        self._state = state
        self._keys = keys
        self._check_s = check_s
        self._on_end = end
        self._members: dict[str, set[M]] = {}
        # Session key -> loop time of its next check; the heap may hold stale times (skipped).
        self._next: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self.live = False  # revocations are being heard

    # Members ------------------------------------------------------------------------------
    def watch(self, session: str, member: M) -> None:
        """Hold `member` until `unwatch`, or until its session (its Redis key) ends."""
        members = self._members.setdefault(session, set())
        members.add(member)
        if len(members) == 1:
            # Checked at once: a logout between the handshake's resolve and now was not heard
            # by this socket (an ended session's members are forgotten, so this covers a second
            # socket of a session that just ended too).
            self._schedule(session, 0.0)

    def unwatch(self, session: str, member: M) -> None:
        members = self._members.get(session)
        if members is None:
            return
        members.discard(member)
        if not members:
            del self._members[session]
            self._next.pop(session, None)

    def members(self) -> Iterator[M]:
        for members in self._members.values():
            yield from members

    def of(self, session: str) -> tuple[M, ...]:
        """The members held under one session's key."""
        return tuple(self._members.get(session, ()))

    def __len__(self) -> int:
        return sum(len(m) for m in self._members.values())

    # What Accounts.listen hears ----------------------------------------------------------
    def revoked(self, token_hash: str) -> None:
        self._end(self._keys.session(token_hash))

    def set_live(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        if not live and not cancel_requested():  # (not at shutdown: nothing is wrong then)
            self._log.warning("session revocations unheard; checking sessions every %.0f s", POLL_S)
        # Either way: revocations may have been missed, look at every session now.
        for key in self._members:
            self._schedule(key, 0.0)

    # Checking ------------------------------------------------------------------------------
    def _end(self, key: str) -> None:
        self._next.pop(key, None)
        for member in self._members.pop(key, ()):
            self._on_end(member)

    def _schedule(self, key: str, at: float) -> None:
        self._next[key] = at
        heapq.heappush(self._heap, (at, key))
        if self._heap[0] == (at, key):
            self._wake.set()

    def _due(self, now: float) -> list[str]:
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now:
            at, key = heapq.heappop(self._heap)
            if self._next.get(key) == at:
                del self._next[key]
                due.append(key)
        return due

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = self._due(loop.time())
            for i in range(0, len(due), BATCH):
                await self._check(due[i : i + BATCH])
            if due:
                continue
            self._wake.clear()
            timeout = self._heap[0][0] - loop.time() if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _check(self, keys: list[str]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with self._state.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.pttl(key)
                ttls = await pipe.execute()
        except DOWN as exc:
            self._log.warning("session check failed; retrying", extra={"err": str(exc)})
            ttls = [None] * len(keys)
        now = loop.time()
        longest = self._check_s if self.live else min(self._check_s, POLL_S)
        for key, ttl in zip(keys, ttls, strict=True):
            if key not in self._members or key in self._next:
                continue  # its sockets left meanwhile, or it was rescheduled meanwhile
            if ttl is None:  # not known: Redis away (a socket then fails on its own anyway)
                self._schedule(key, now + min(longest, POLL_S))
            elif int(ttl) == -2:  # no such key: logged out or expired
                self._end(key)
            elif int(ttl) < 0:  # no expiry at all (not one of ours): look again later
                self._schedule(key, now + longest)
            else:
                self._schedule(key, now + min(longest, int(ttl) / 1000 + AFTER_EXPIRY_S))
