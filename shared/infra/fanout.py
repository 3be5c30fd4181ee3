"""One pub/sub connection per process, shared by its members (a matcher's sockets by user, an
api's collab sockets by document), each channel subscribed while some member here holds it.

The first member of a channel subscribes and waits for Redis's confirmation, so nothing published
after `join` returns is missed; the last one to leave unsubscribes. A `Listener` reads the
connection (redis-py reconnects it on the next read and subscribes every channel again); what was
published while it was down is lost to pub/sub, so once it is live again the owner's `on_resume`
runs (off the read loop, which must keep up) to catch up from wherever the record is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis

from shared.infra.dependencies import REDIS_DOWN
from shared.infra.listener import Listener

log = logging.getLogger("redline.fanout")

SUBSCRIBE_WAIT_S = 2.0

M = TypeVar("M")
OnMessage = Callable[[str, Any], Awaitable[None]]
OnResume = Callable[[], Coroutine[Any, Any, None]]


class Fanout(Generic[M]):
    def __init__(
        self,
        subscriber: Redis,
        name: str,
        control: str,
        on_message: OnMessage,
        on_resume: OnResume,
    ) -> None:
        """`subscriber`: its own client with no read timeout (shared/infra/clients.py
        `pubsub_client`), closed by `stop`. `control`: a channel of this process's own that
        nobody publishes on (redis-py reads nothing until something is subscribed)."""
        self._subscriber = subscriber
        self._pubsub = subscriber.pubsub()
        self._control = control
        self._on_message = on_message
        self._on_resume = on_resume
        self._listener = Listener(name, on_up=self._live)
        self._was_live = False
        self._members: dict[str, set[M]] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._resuming: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start reading; never waits for Redis (a service starts, unready, while it is down)."""
        self._task = asyncio.create_task(self._listener.run(self._session), name=self._control)

    async def stop(self) -> None:
        for task in (self._task, self._resuming):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(*REDIS_DOWN):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._subscriber.aclose()

    async def publish(self, channel: str, payload: str | bytes) -> None:
        await self._subscriber.publish(channel, payload)

    def members(self, channel: str | None = None) -> Iterator[M]:
        """The members holding `channel`, or every member."""
        if channel is not None:
            yield from tuple(self._members.get(channel, ()))
            return
        for members in tuple(self._members.values()):
            yield from tuple(members)

    def channels(self) -> tuple[str, ...]:
        return tuple(self._members)

    def __len__(self) -> int:
        return sum(len(m) for m in self._members.values())

    async def join(self, channel: str, member: M) -> bool:
        """Hold `channel` for `member`; True once Redis has confirmed the subscription (False
        after SUBSCRIBE_WAIT_S, or with Redis away: the owner decides what that costs)."""
        members = self._members.setdefault(channel, set())
        members.add(member)
        if len(members) > 1:
            # Another member subscribed already, or is subscribing: wait for that.
            pending = self._confirmed.get(channel)
            if pending is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.wait(), SUBSCRIBE_WAIT_S)
                return pending.is_set()
            return True
        confirmed = self._confirmed[channel] = asyncio.Event()
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_WAIT_S)
            return True
        except REDIS_DOWN as exc:  # TimeoutError, from the wait, is an OSError
            log.warning("subscription not confirmed", extra={"channel": channel, "err": exc})
            return False
        finally:
            self._confirmed.pop(channel, None)

    async def leave(self, channel: str, member: M) -> None:
        members = self._members.get(channel)
        if members is None:
            return
        members.discard(member)
        if members:
            return
        del self._members[channel]
        with contextlib.suppress(*REDIS_DOWN):
            await self._pubsub.unsubscribe(channel)

    async def _session(self) -> None:
        if not self._pubsub.subscribed:
            await self._pubsub.subscribe(self._control)
        while True:
            message = await self._pubsub.get_message(timeout=5.0)
            self._listener.check()
            self._listener.up()
            if message is not None:
                await self._dispatch(message)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        raw = message.get("channel")
        channel = raw.decode() if isinstance(raw, bytes) else str(raw)
        if message.get("type") == "subscribe":
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
        elif message.get("type") == "message" and channel in self._members:
            await self._on_message(channel, message.get("data"))

    def _live(self) -> None:
        """Live again after an outage (not the first time: nothing was missed before)."""
        if self._was_live:
            self._resuming = asyncio.create_task(self._on_resume(), name=f"{self._control} resume")
        self._was_live = True
