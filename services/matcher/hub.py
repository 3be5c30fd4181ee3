"""Cross-instance delivery: one Redis pub/sub connection per process, subscribed to the channel of
every user with a socket here, fanning each message out to that user's local connections.

A per-user channel (rather than one per process) means a publisher needs no registry of who is
where: it publishes to the partner's channel and whichever processes hold the partner hear it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.matcher.connection import Connection
from services.matcher.messages import Delivery
from shared.infra.clients import reset_safe
from shared.infra.listener import cancel_requested
from shared.store.keys import Keys

log = logging.getLogger("redline.matcher.hub")

OnDelivery = Callable[[Connection, Delivery], Awaitable[None] | None]
OnReconnect = Callable[[], Coroutine[Any, Any, None]]
SUBSCRIBE_WAIT_S = 2.0


class Hub:
    def __init__(
        self, url: str, keys: Keys, on_delivery: OnDelivery, on_reconnect: OnReconnect
    ) -> None:
        # Its own client with no read timeout: a pub/sub connection is idle most of the time.
        self._redis: Redis = Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=2,
            health_check_interval=15,
            **reset_safe(url),
        )
        self._pubsub = self._redis.pubsub()
        self._keys = keys
        self._on_delivery = on_delivery
        self._on_reconnect = on_reconnect
        self._recovery: asyncio.Task[None] | None = None
        self._local: dict[str, set[Connection]] = {}
        self._user_of: dict[str, str] = {}
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # A subscription is needed before get_message works: the process's own control channel.
        await self._pubsub.subscribe(self._keys.match_channel("-"))
        self._task = asyncio.create_task(self._listen(), name="matcher-hub")

    async def stop(self) -> None:
        for task in (self._task, self._recovery):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._pubsub.aclose()
        await self._redis.aclose()

    def connections(self) -> Iterator[Connection]:
        for conns in self._local.values():
            yield from conns

    def __len__(self) -> int:
        return sum(len(c) for c in self._local.values())

    async def attach(self, conn: Connection) -> None:
        """Hear the user's channel before they enter the pool, so no result can be missed."""
        conns = self._local.setdefault(conn.user_id, set())
        conns.add(conn)
        channel = self._keys.match_channel(conn.user_id)
        if len(conns) > 1:
            # Another socket of the user subscribed already, or is subscribing: wait for that.
            pending = self._confirmed.get(channel)
            if pending is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pending.wait(), SUBSCRIBE_WAIT_S)
            return
        self._user_of[channel] = conn.user_id
        confirmed = self._confirmed[channel] = asyncio.Event()
        try:
            await self._pubsub.subscribe(channel)
            # The subscription is live once Redis confirms it; the inbox covers a timeout here.
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_WAIT_S)
        except (TimeoutError, RedisError) as exc:
            log.warning("subscription not confirmed", extra={"user": conn.user_id, "err": exc})
        finally:
            self._confirmed.pop(channel, None)

    async def detach(self, conn: Connection) -> None:
        conns = self._local.get(conn.user_id)
        if conns is None:
            return
        conns.discard(conn)
        if conns:
            return
        del self._local[conn.user_id]
        channel = self._keys.match_channel(conn.user_id)
        self._user_of.pop(channel, None)
        with contextlib.suppress(RedisError):
            await self._pubsub.unsubscribe(channel)

    async def _listen(self) -> None:
        broken = False
        while True:
            try:
                message = await self._pubsub.get_message(timeout=5.0)
                if cancel_requested():
                    raise asyncio.CancelledError
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if cancel_requested():
                    raise asyncio.CancelledError from exc
                # redis-py reconnects and re-subscribes every channel on the next read.
                log.warning("pub/sub read failed; retrying", extra={"err": str(exc)})
                broken = True
                await asyncio.sleep(0.5)
                continue
            if broken:
                # Back: whatever was published meanwhile is lost to pub/sub, but results also
                # wait in the inboxes; have them delivered (off this loop, which must keep up).
                broken = False
                log.info("pub/sub reconnected; delivering from inboxes")
                self._recovery = asyncio.create_task(self._on_reconnect())
            if message is not None:
                await self._dispatch(message)

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
        for conn in list(self._local.get(user_id, ())):
            result = self._on_delivery(conn, delivery)
            if result is not None:
                await result
