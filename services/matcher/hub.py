"""Cross-instance delivery: every user with a match socket here has their channel subscribed on
the process's one pub/sub connection (shared/infra/fanout.py), and each result published there
goes to that user's local sessions.

A per-user channel (rather than one per process) means a publisher needs no registry of who is
where: it publishes to the partner's channel and whichever processes hold the partner hear it.
Whatever is published while the connection is down is lost to pub/sub, but results also wait in
the inboxes: once live again the hub has them delivered (`on_reconnect`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError
from redis.asyncio import Redis

from services.matcher.messages import Delivery
from shared.infra.fanout import Fanout
from shared.store.keys import Keys

log = logging.getLogger("redline.matcher.hub")


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
        """`redis`: a `pubsub_client`, closed by `stop`."""
        self._keys = keys
        self._on_delivery = on_delivery
        self._fanout: Fanout[S] = Fanout(
            redis, "match pub/sub", keys.match_channel("-"), self._message, on_reconnect
        )

    async def start(self) -> None:
        await self._fanout.start()

    async def stop(self) -> None:
        await self._fanout.stop()

    def members(self) -> Iterator[S]:
        return self._fanout.members()

    def __len__(self) -> int:
        return len(self._fanout)

    async def attach(self, member: S) -> None:
        """Hear the user's channel before they enter the pool, so no result can be missed (a
        subscription not confirmed in time is covered by the inbox)."""
        await self._fanout.join(self._keys.match_channel(member.user_id), member)

    async def detach(self, member: S) -> None:
        await self._fanout.leave(self._keys.match_channel(member.user_id), member)

    async def _message(self, channel: str, data: Any) -> None:
        try:
            delivery = Delivery.model_validate_json(str(data))
        except ValidationError:
            log.warning("malformed delivery ignored", extra={"channel": channel})
            return
        for member in self._fanout.members(channel):
            await self._on_delivery(member, delivery)
