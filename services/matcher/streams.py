"""One reader per process for every event stream its sockets follow (document streams and the
users' inboxes): a single task doing XREAD BLOCK over all of them, fanning entries out to the
following connections' bounded outboxes (a connection that cannot keep up is cut there).

A connection starts following in two steps, so no entry is missed or sent twice: `follow`
registers it (entries the reader meets meanwhile are buffered), the caller reads the backlog
and sends it, then `start_at(last id of the backlog)` releases the buffer after that id. Every
connection remembers the last id it was sent and skips anything not after it.

When the set of streams changes while the XREAD is blocked, the reader is woken by an entry in
its own wake stream (read in the same XREAD). On Redis Cluster a multi-key XREAD must stay in
one slot: there the reader issues one short-blocking XREAD per slot instead (no wake stream,
so a newly followed stream is read within `CLUSTER_BLOCK_MS`).

The read loop is a `Listener` session: a failed read ends it, and the next one, after a backoff,
reads on from the same cursors, so a reconnecting reader misses nothing the streams still hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from redis.crc import key_slot

from services.matcher.connection import Connection
from services.matcher.messages import Event, StreamPos, doc_event, inbox_event, pos
from shared.infra.clients import blocking_client
from shared.infra.dependencies import REDIS_DOWN
from shared.infra.listener import Listener
from shared.store.keys import Keys

log = logging.getLogger("redline.matcher.streams")

Kind = Literal["doc", "inbox"]
Entry = tuple[str, dict[str, str]]
CLUSTER_BLOCK_MS = 100
WAKE_TTL_MS = 3_600_000


@dataclass(eq=False, slots=True)
class Follow:
    conn: Connection
    kind: Kind
    last: StreamPos = (0, 0)
    # Entries met while the backlog is being read; None once following live.
    buffer: list[Entry] | None = field(default_factory=list)


class StreamReader:
    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        cluster: bool = False,
        block_ms: int = 5000,
        batch: int = 1000,
    ) -> None:
        # Its own client: the XREAD holds a connection while it blocks.
        self._redis = blocking_client(url, cluster=cluster, block_s=block_ms / 1000)
        self._cluster = cluster
        self._block_ms = block_ms
        self._batch = batch
        self._wake_key = keys.events_wake(secrets.token_hex(8))
        self._wake_id = "0-0"
        self._waking = False
        self._reading = False
        self._follows: dict[str, dict[Connection, Follow]] = {}
        # The streams the XREAD covers and the id to read after; a stream being followed for
        # the first time joins once its first follower's backlog is read (start_at).
        self._cursor: dict[str, str] = {}
        self._changed = asyncio.Event()
        self._listener = Listener("event stream reader")
        self._task: asyncio.Task[None] | None = None
        self._wakes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listener.run(self._session), name="events-reader")

    async def stop(self) -> None:
        for task in (self._task, *self._wakes):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(*REDIS_DOWN):
            await self._redis.delete(self._wake_key)
        await self._redis.aclose()

    @property
    def streams(self) -> int:
        return len(self._follows)

    # Following -----------------------------------------------------------------------------
    def follow(self, key: str, conn: Connection, kind: Kind) -> Follow:
        """Register first, then read the backlog, then `start_at`: nothing falls in between."""
        follow = Follow(conn, kind)
        self._follows.setdefault(key, {})[conn] = follow
        return follow

    def start_at(self, key: str, follow: Follow, last_id: str) -> None:
        """The backlog up to `last_id` was sent: go live from there."""
        follow.last = pos(last_id)
        if key not in self._cursor:
            self._cursor[key] = last_id
            self._wake()
        pending, follow.buffer = follow.buffer or [], None
        for entry_id, fields in pending:
            self._deliver(follow, entry_id, fields, {})

    def unfollow(self, key: str, conn: Connection) -> None:
        follows = self._follows.get(key)
        if follows is None:
            return
        follows.pop(conn, None)
        if not follows:
            # The XREAD in flight may still return it: its entries then find no follower.
            del self._follows[key]
            self._cursor.pop(key, None)

    def _wake(self) -> None:
        self._changed.set()
        if not self._reading or self._waking or self._cluster:
            return
        self._waking = True
        task = asyncio.create_task(self._send_wake())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)

    async def _send_wake(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1)
                pipe.pexpire(self._wake_key, WAKE_TTL_MS)
                await pipe.execute()
        except REDIS_DOWN as exc:  # the reader's block timeout covers a lost wake
            log.warning("could not wake the event reader", extra={"err": str(exc)})

    # Reading -------------------------------------------------------------------------------
    async def _session(self) -> None:
        while True:
            if not self._cursor:  # nothing to read: no connection held, no read issued
                self._changed.clear()
                await self._changed.wait()
                continue
            replies = await self._read()
            self._listener.check()
            self._listener.up()
            for key, entries in replies:
                self._dispatch(key, entries)

    async def _read(self) -> list[tuple[str, list[Entry]]]:
        streams = dict(self._cursor)
        self._changed.clear()
        if self._cluster:
            groups: dict[int, dict[str, str]] = defaultdict(dict)
            for key, cursor in streams.items():
                groups[key_slot(key.encode())][key] = cursor
            replies = await asyncio.gather(
                *(self._xread(g, CLUSTER_BLOCK_MS) for g in groups.values())
            )
            return [pair for reply in replies for pair in reply]
        streams[self._wake_key] = self._wake_id
        self._reading, self._waking = True, False
        try:
            return await self._xread(streams, self._block_ms)
        finally:
            self._reading = False

    async def _xread(
        self, streams: Mapping[str, str], block_ms: int
    ) -> list[tuple[str, list[Entry]]]:
        reply = await self._redis.xread(cast(Any, dict(streams)), count=self._batch, block=block_ms)
        return [(str(key), list(entries)) for key, entries in reply or []]

    def _dispatch(self, key: str, entries: list[Entry]) -> None:
        if not entries:
            return
        if key == self._wake_key:
            self._wake_id = entries[-1][0]
            return
        cursor = self._cursor.get(key)
        if cursor is not None and pos(entries[-1][0]) > pos(cursor):
            self._cursor[key] = entries[-1][0]
        follows = self._follows.get(key)
        if not follows:
            return
        for entry_id, fields in entries:
            built: dict[Kind, Event | None] = {}
            for follow in list(follows.values()):
                self._deliver(follow, entry_id, fields, built)

    @staticmethod
    def _deliver(
        follow: Follow, entry_id: str, fields: dict[str, str], built: dict[Kind, Event | None]
    ) -> None:
        if follow.buffer is not None:
            follow.buffer.append((entry_id, fields))
            return
        at = pos(entry_id)
        if at <= follow.last:
            return
        follow.last = at
        if follow.kind not in built:  # one frame per entry, whatever the number of followers
            built[follow.kind] = frame(follow.kind, entry_id, fields)
        event = built[follow.kind]
        if event is not None:
            follow.conn.push(event)


def frame(kind: Kind, entry_id: str, fields: Mapping[str, str]) -> Event | None:
    return doc_event(entry_id, fields) if kind == "doc" else inbox_event(entry_id, fields)
