"""A user's limits on the matcher: the socket cap, counted across every matcher process, and the
rate of a socket's costly requests (`throttle`: find_match, subscribe).

Per process would not do: behind a load balancer a user's sockets spread over the processes,
and a per-process cap multiplies with their number. So each open socket (match or events) is an
entry of its user's sorted set in the state Redis (`Keys.user_sockets`), scored by when the
entry lapses unrenewed: the heartbeat renews them every `pool_ttl_s / 3`, a socket's exit
removes its own, and a process that dies leaves entries that lapse after `pool_ttl_s` (the user
may meanwhile be refused while at the cap; Retry-After says when to try again).

Taking a place is one pipelined round trip on one key (one node on Redis Cluster, which has no
MULTI in redis-py's cluster client): drop lapsed entries, add this one, then count. Over the cap,
the entry is removed again (a second round trip, on the refusal path only). No MULTI is needed
for the cap to hold: every socket is added before it counts, so the last admitted one counted
every admitted one; racing opens at the cap may at worst both be refused, never both admitted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

from redis.asyncio import Redis
from starlette.websockets import WebSocket

from services.matcher.connection import Connection
from shared.domain.handshake import refuse, refuse_unavailable
from shared.infra.clock import now_ms
from shared.infra.dependencies import DOWN
from shared.store.keys import Keys
from shared.store.scripts import Scripts

BATCH = 500


class SocketQuota:
    def __init__(self, state: Redis, keys: Keys, limit: int, lease_s: int) -> None:
        self._state = state
        self._keys = keys
        self.limit = limit
        self._lease_ms = lease_s * 1000

    async def take(self, user_id: str, socket_id: str) -> bool:
        """Count this socket in; False (and not counted) when the user is at the cap."""
        key = self._keys.user_sockets(user_id)
        now = now_ms()
        async with self._state.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {socket_id: now + self._lease_ms})
            pipe.zcard(key)
            pipe.pexpire(key, self._lease_ms)
            _, _, count, _ = await pipe.execute()
        if int(count) <= self.limit:
            return True
        await self._state.zrem(key, socket_id)
        return False

    async def release(self, user_id: str, socket_id: str) -> None:
        with contextlib.suppress(*DOWN):  # else it lapses with its lease
            await self._state.zrem(self._keys.user_sockets(user_id), socket_id)

    async def renew(self, conns: Iterable[Connection]) -> None:
        """Extend the entries of these open sockets (XX: one removed meanwhile stays removed)."""
        batch: list[Connection] = []
        for conn in conns:
            batch.append(conn)
            if len(batch) == BATCH:
                await self._renew(batch)
                batch = []
        if batch:
            await self._renew(batch)

    async def _renew(self, conns: list[Connection]) -> None:
        until = now_ms() + self._lease_ms
        async with self._state.pipeline(transaction=False) as pipe:
            for conn in conns:
                key = self._keys.user_sockets(conn.user_id)
                pipe.zadd(key, {conn.sid: until}, xx=True)
                pipe.pexpire(key, self._lease_ms)
            await pipe.execute()


async def throttle(scripts: Scripts, key: str, period_s: int, rate: int) -> int | None:
    """One request under a GCRA limit of `rate` per `period_s`: None when allowed, else the
    seconds to wait (at least 1, as a Retry-After)."""
    interval_ms = max(1, period_s * 1000 // rate)
    decision = await scripts.gcra(key, interval_ms, rate, now_ms())
    if decision.allowed:
        return None
    return max(1, math.ceil(decision.retry_after_ms / 1000))


# How long a user at the socket cap is told to wait: until they close a socket, really; a place
# held by a process that died lapses within pool_ttl_s.
SOCKETS_RETRY_S = 10


async def admit(ws: WebSocket, quota: SocketQuota, user_id: str, socket_id: str) -> bool:
    """Count the socket in its user's cap, or refuse the handshake (429, or 503)."""
    try:
        taken = await quota.take(user_id, socket_id)
    except DOWN as exc:
        # The count is a write: a state Redis at maxmemory refuses it (the session's read before
        # it still worked), and the answer says so.
        await refuse_unavailable(ws, exc)
        return False
    if not taken:
        await refuse(
            ws,
            429,
            f"at most {quota.limit} open sockets per user: close one first",
            {"Retry-After": str(SOCKETS_RETRY_S)},
        )
    return taken
