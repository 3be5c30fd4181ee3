"""Typed wrappers around the awareness scripts (shared/store/lua/awareness_*.lua): a co-edited
document's stored awareness states (cursors, names, selections), so that a socket joining late, or
asking with query-awareness, gets them at once. Bounded (entries per document, bytes per state),
expiring, never persisted. They run on a client whose replies stay bytes
(`redis_client(..., binary=True)`), as the update log's do.

An entry is "<clock> <expiry ms> <origin> <state JSON>" under its Yjs client id in the document's
hash (`Keys.awareness`); the origin is the socket that stored it, so a closing socket clears only
what it still owns."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from redis.asyncio import Redis

from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import lua_source

NAMES = ("awareness_set", "awareness_clear")

# (Yjs client id, clock, state JSON): one entry of a y-protocols awareness update.
Entry = tuple[int, int, bytes]


class AwarenessStatus(IntEnum):
    STORED = 1
    REMOVED = 2  # a null state: the client left
    STALE = 0  # the stored clock is newer (or this socket sent this clock already)
    FULL = -1  # the document holds its cap of entries
    TOO_BIG = -2  # the state is over the byte cap

    @property
    def taken(self) -> bool:
        """Stored or removed: the entry goes on to the other clients."""
        return self > 0


@dataclass(frozen=True, slots=True)
class AwarenessLimits:
    ttl_ms: int
    max_entries: int
    max_state_bytes: int


def awareness_limits(settings: Settings) -> AwarenessLimits:
    return AwarenessLimits(
        ttl_ms=max(1, round(settings.collab_awareness_ttl_s * 1000)),
        max_entries=settings.collab_awareness_max_entries,
        max_state_bytes=settings.collab_awareness_max_state_bytes,
    )


class AwarenessStore:
    def __init__(self, redis: Redis, keys: Keys, limits: AwarenessLimits) -> None:
        self._redis = redis
        self._keys = keys
        self._limits = limits
        self._s = {name: redis.register_script(lua_source(name)) for name in NAMES}

    async def set(
        self,
        doc_id: str,
        entries: Sequence[Entry],
        origin: str,
        now_ms: int,
        relay: bytes = b"",
    ) -> list[AwarenessStatus]:
        """Store `entries` as owned by `origin`; a status for each, in order. When every entry
        was taken, `relay` is published on the document's channel in the same call."""
        if not entries:
            return []
        k, lim = self._keys, self._limits
        args: list[int | str | bytes] = [
            now_ms,
            lim.ttl_ms,
            lim.max_entries,
            lim.max_state_bytes,
            origin,
            k.collab_channel(doc_id),
            relay,
        ]
        for client, clock, state in entries:
            args += (client, clock, state)
        statuses = await self._s["awareness_set"](keys=(k.awareness(doc_id),), args=args)
        return [AwarenessStatus(int(s)) for s in statuses]

    async def clear(
        self, doc_id: str, origin: str, clients: Sequence[int]
    ) -> list[tuple[int, int]]:
        """Remove those of `clients` whose entries `origin` still owns: their (client id, clock),
        to tell the others they are gone."""
        if not clients:
            return []
        flat = await self._s["awareness_clear"](
            keys=(self._keys.awareness(doc_id),), args=(origin, *clients)
        )
        return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    async def states(self, doc_id: str, now_ms: int) -> list[Entry]:
        """Every entry not expired at `now_ms`, by client id (a plain read: expired ones are
        left for the set script to sweep)."""
        # redis-py types its commands as sync-or-async; this client is the async one.
        raw = self._redis.hgetall(self._keys.awareness(doc_id))
        stored = cast(dict[bytes, bytes], await cast(Awaitable[Any], raw))
        out: list[Entry] = []
        for client, value in sorted(stored.items(), key=lambda item: int(item[0])):
            clock, expiry, _origin, state = value.split(b" ", 3)
            if int(expiry) > now_ms:
                out.append((int(client), int(clock), state))
        return out
