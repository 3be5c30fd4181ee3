"""Cross-instance delivery: one Redis pub/sub connection per process, subscribed to the channel of
every user with a match socket here, fanning each message out to that user's local sessions.

A per-user channel (rather than one per process) means a publisher needs no registry of who is
where: it publishes to the partner's channel and whichever processes hold the partner hear it.

The read loop is a `Listener` session. The one `PubSub` lives as long as the hub (attach and
detach subscribe on it from the sockets' tasks); after a failure, redis-py reconnects it on the
next read and subscribes every channel again. Whatever was published meanwhile is lost to
pub/sub, but results also wait in the inboxes: once live again the hub has them delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis

from services.matcher.messages import Delivery
from shared.infra.dependencies import REDIS_DOWN
from shared.infra.listener import Listener
from shared.store.keys import Keys

log = logging.getLogger("redline.matcher.hub")

SUBSCRIBE_WAIT_S = 2.0


class Member(Protocol):
    @property
    def user_id(self) -> str: ...


S = TypeVar("S", bound=Member)
OnReconnect = Callable[[], Coroutine[Any, Any, None]]


class Hub(Generic[S]):
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        on_delivery: Callable[[S, Delivery], Awaitable[None]],
        on_reconnect: OnReconnect,
    ) -> None:
        # Its own client with no read timeout (shared/infra/clients.py `pubsub_client`): a
        # pub/sub connection is idle most of the time. The hub closes it.
        self._redis = redis
        self._pubsub = redis.pubsub()
        self._keys = keys
        self._on_delivery = on_delivery
        self._on_reconnect = on_reconnect
        self._listener = Listener("match pub/sub", on_up=self._live)
        self._was_live = False
        self._recovery: asyncio.Task[None] | None = None
        self._local: dict[str, set[S]] = {}
        self._user_of: dict[str, str] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A subscription is needed before get_message works: the process's own control channel.
        await self._pubsub.subscribe(self._keys.match_channel("-"))
        self._task = asyncio.create_task(self._listener.run(self._session), name="matcher-hub")

    async def stop(self) -> None:
        for task in (self._task, self._recovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._redis.aclose()

    def members(self) -> Iterator[S]:
        for members in self._local.values():
            yield from members

    def __len__(self) -> int:
        return sum(len(m) for m in self._local.values())

    async def attach(self, member: S) -> None:
        """Hear the user's channel before they enter the pool, so no result can be missed."""
        members = self._local.setdefault(member.user_id, set())
        members.add(member)
        channel = self._keys.match_channel(member.user_id)
        if len(members) > 1:
            # Another socket of the user subscribed already, or is subscribing: wait for that.
            pending = self._confirmed.get(channel)
            if pending is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.wait(), SUBSCRIBE_WAIT_S)
            return
        self._user_of[channel] = member.user_id
        confirmed = self._confirmed[channel] = asyncio.Event()
        try:
            await self._pubsub.subscribe(channel)
            # The subscription is live once Redis confirms it; the inbox covers a timeout here.
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_WAIT_S)
        except REDIS_DOWN as exc:  # TimeoutError, from the wait, is an OSError
            log.warning("subscription not confirmed", extra={"user": member.user_id, "err": exc})
        finally:
            self._confirmed.pop(channel, None)

    async def detach(self, member: S) -> None:
        members = self._local.get(member.user_id)
        if members is None:
            return
        members.discard(member)
        if members:
            return
        del self._local[member.user_id]
        channel = self._keys.match_channel(member.user_id)
        self._user_of.pop(channel, None)
        with contextlib.suppress(*REDIS_DOWN):
            await self._pubsub.unsubscribe(channel)

    async def _session(self) -> None:
        while True:
            message = await self._pubsub.get_message(timeout=5.0)
            self._listener.check()
            self._listener.up()
            if message is not None:
                await self._dispatch(message)

    def _live(self) -> None:
        """Live again after an outage: deliver from the inboxes (off the read loop, which must
        keep up). Not on the first time: nothing was missed before."""
        if self._was_live:
            self._recovery = asyncio.create_task(self._on_reconnect(), name="inbox-redelivery")
        self._was_live = True

    async def _dispatch(self, message: dict[str, object]) -> None:
        channel = str(message.get("channel"))
        if message.get("type") == "subscribe":
            event = self._confirmed.get(channel)
            if event is not None:
                event.set()
            return
        if message.get("type") != "message":
            return
        user_id = self._user_of.get(channel)
        if user_id is None:
            return
        try:
            delivery = Delivery.model_validate_json(str(message.get("data")))
        except ValidationError:
            log.warning("malformed delivery ignored", extra={"channel": channel})
            return
        for member in list(self._local.get(user_id, ())):
            await self._on_delivery(member, delivery)
