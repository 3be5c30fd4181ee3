"""`/v1/ws/events`: a user's inbox (job and match results) and the events of the documents they
subscribe to, from the process's one `StreamReader`.

The handshake is the match socket's (Origin, then bearer token, before accept). Subscribing
needs read access to the document (shared/domain/documents.py decides); a document the user may not
read gets exactly the error frame of one that does not exist.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from redis.asyncio import Redis
from starlette.websockets import WebSocket

from services.matcher.connection import Connection, parse, receive_loop
from services.matcher.handshake import authenticate
from services.matcher.matcher import UNAVAILABLE, Matcher
from services.matcher.messages import (
    STREAM_ID_MAX,
    ErrorMsg,
    Ping,
    Pong,
    RateLimitedMsg,
    Reset,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    events_client_message,
    pos,
    stream_id,
)
from services.matcher.pool import PoolEntry
from services.matcher.streams import Kind, StreamReader, frame
from shared.domain.accounts import token_hash
from shared.infra.clock import now_ms
from shared.infra.dependencies import DOWN

log = logging.getLogger("redline.matcher.events")


async def _nothing_to_ack(user_id: str, inbox_id: str) -> None:
    # The events socket never deletes inbox entries: several tabs may read the same inbox.
    return None


class EventsEndpoint:
    def __init__(self, matcher: Matcher, reader: StreamReader) -> None:
        self._m = matcher
        self._settings = matcher.settings
        self._keys = matcher.keys
        self._state: Redis = matcher.state
        self._reader = reader

    @property
    def streams(self) -> int:
        """How many streams this process's reader follows (exported on /metrics)."""
        return self._reader.streams

    async def serve(self, ws: WebSocket) -> None:
        conn = await self._open(ws)
        if conn is None:
            return
        followed: set[str] = set()
        try:
            self._m.sessions.add(conn)
            since = await self._inbox_since(conn)
            if conn.close_with is not None:
                return
            inbox = self._keys.inbox(conn.user_id)
            followed.add(inbox)
            await self._follow(conn, inbox, "inbox", since)

            async def handle(c: Connection, text: str) -> None:
                await self._handle(c, text, followed)

            await receive_loop(conn, self._settings, handle)
        except DOWN as exc:
            log.warning("events dependency failed", extra={"err": str(exc)})
            conn.close_with = conn.close_with or UNAVAILABLE
        except Exception:
            log.exception("events socket failed", extra={"user": conn.user_id})
            conn.close_with = conn.close_with or (1011, "internal error")
        finally:
            self._m.sessions.discard(conn)
            for key in followed:
                self._reader.unfollow(key, conn)
            await conn.stop()
            await self._m.quota.release(conn.user_id, conn.sid)
            await self._m.close(conn)

    async def _inbox_since(self, conn: Connection) -> str | None:
        """`?inbox_since=`, checked as a `since` is; a bad one is told (the one frame sent so
        far: no writer task yet) and the socket closed 1008, rather than Redis refusing it."""
        raw = conn.ws.query_params.get("inbox_since")
        if raw is None:
            return None
        try:
            return stream_id(raw)
        except ValueError as exc:
            told = ErrorMsg(detail=f"invalid inbox_since: {exc}")
            await conn.ws.send_text(told.model_dump_json())
            conn.close_with = (1008, "invalid inbox_since")
            return None

    async def _open(self, ws: WebSocket) -> Connection | None:
        caller = await authenticate(
            ws, self._settings.allowed_origins, self._m.accounts, "an events socket"
        )
        if caller is None:
            return None
        principal, token = caller.principal, caller.token
        conn = Connection(
            ws,
            principal,
            "",
            PoolEntry(user_id=principal.user_id, ticket=""),
            self._settings.ws_send_queue,
            _nothing_to_ack,
            self._keys.session(token_hash(token)),
        )
        return await self._m.accept(conn, caller.subprotocol)

    async def _handle(self, conn: Connection, text: str, followed: set[str]) -> None:
        msg = parse(conn, events_client_message, text)
        if msg is None:
            return
        if isinstance(msg, Ping):
            conn.push(Pong())
        elif isinstance(msg, Subscribe):
            await self._subscribe(conn, msg, followed)
        elif isinstance(msg, Unsubscribe):
            key = self._keys.doc_events(msg.document_id)
            if key in followed:
                followed.discard(key)
                self._reader.unfollow(key, conn)
            conn.push(Unsubscribed(document_id=msg.document_id))

    async def _subscribe(self, conn: Connection, msg: Subscribe, followed: set[str]) -> None:
        doc_id = msg.document_id  # canonical (services/matcher/messages.py): one spelling, one key
        # Before any lookup: each subscribe costs a Redis and a Postgres read.
        settings = self._settings
        decision = await self._m.scripts.gcra(
            self._keys.rate_limit("subscribe", conn.user_id),
            max(1, settings.subscribe_period_s * 1000 // settings.subscribe_rate),
            settings.subscribe_rate,
            now_ms(),
        )
        if not decision.allowed:
            retry_after = max(1, math.ceil(decision.retry_after_ms / 1000))
            conn.push(RateLimitedMsg(retry_after=retry_after, document_id=doc_id))
            return
        key = self._keys.doc_events(doc_id)
        # The inbox is one of `followed`, hence the + 1.
        if key not in followed and len(followed) >= self._settings.ws_max_subscriptions + 1:
            conn.push(ErrorMsg(detail="too many subscriptions: unsubscribe from some first"))
            return
        if not await self._m.documents.readable(conn.principal, doc_id):
            conn.push(ErrorMsg(detail=f"document {doc_id} not found"))
            return
        if key in followed:  # subscribing again starts over from the new `since`
            self._reader.unfollow(key, conn)
        followed.add(key)
        await self._follow(conn, key, "doc", msg.since, doc_id)

    async def _follow(
        self, conn: Connection, key: str, kind: Kind, since: str | None, doc_id: str = ""
    ) -> None:
        """Register, send the backlog after `since` (or, for a document, a `reset` when it is
        gone or too long to send), then go live after the last id sent."""
        follow = self._reader.follow(key, conn, kind)
        try:
            backlog, last_id, reset = await self._backlog(key, kind, since)
        except BaseException:
            self._reader.unfollow(key, conn)
            raise
        if reset:
            conn.push(Reset(document_id=doc_id))
            backlog = []
        for entry_id, fields in backlog:
            event = frame(kind, entry_id, fields)
            if event is not None:
                conn.push(event)
        if kind == "doc":
            conn.push(Subscribed(document_id=doc_id, last_id=last_id))
        self._reader.start_at(key, follow, last_id)

    async def _backlog(
        self, key: str, kind: Kind, since: str | None
    ) -> tuple[list[tuple[str, dict[str, str]]], str, bool]:
        """(entries after `since`, the last id, reset?)."""
        if since is None and kind == "doc":
            newest = await self._state.xrevrange(key, count=1)
            return [], newest[0][0] if newest else "0-0", False
        start = "-" if since is None else f"({since}"
        # A backlog longer than half the outbox would cut the client as slow: for a document,
        # a reset instead; for an inbox (capped, but `MAXLEN ~` may keep more), its newest.
        room = max(1, self._settings.ws_send_queue // 2)
        async with self._state.pipeline(transaction=False) as pipe:
            pipe.xinfo_stream(key)
            if kind == "doc":
                pipe.xrange(key, min=start, count=room + 1)
            else:
                pipe.xrevrange(key, min=start, count=room)
            info, entries = await pipe.execute(raise_on_error=False)
        if since == STREAM_ID_MAX:
            # Nothing can come after the largest id, and Redis refuses it as an exclusive start.
            entries = []
        if kind == "inbox" and isinstance(entries, list):
            entries.reverse()
        if isinstance(info, Exception):  # no such stream (never written, or expired)
            last = since or "0-0"
            return [], last, kind == "doc" and since is not None and since != "0-0"
        newest = str(info["last-generated-id"])
        if since is None:
            return _list(entries), _last(entries, newest), False
        # Entries were removed (the cap) and `since` is before the oldest one left: some after
        # it may be gone. (Conservative: `since` naming the last removed entry also resets.)
        removed = int(info["entries-added"]) > int(info["length"])
        first = info.get("first-entry")
        oldest = str(first[0]) if first else newest
        trimmed = removed and pos(since) < pos(oldest)
        foreign = pos(since) > pos(newest)  # not an id of this stream (or an older life of it)
        if kind == "doc" and (trimmed or foreign or len(entries) > room):
            return [], newest, True
        return _list(entries), _last(entries, since), False


def _list(entries: Any) -> list[tuple[str, dict[str, str]]]:
    return [(str(i), dict(f)) for i, f in entries or []]


def _last(entries: Any, default: str) -> str:
    return str(entries[-1][0]) if entries else default
