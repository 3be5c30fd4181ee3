"""Users, tenants, password hashing and sessions (opaque tokens, stored hashed, sliding expiry)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from shared.domain.errors import Conflict, Unauthenticated
from shared.infra.clients import pubsub_client
from shared.infra.listener import Listener
from shared.settings import Settings
from shared.store import queries
from shared.store.keys import Keys

Role = Literal["owner", "member"]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    tenant_id: str
    username: str
    role: Role

    @property
    def grants(self) -> tuple[str, str]:
        """What this user may open: their tenant's documents and rooms that list them."""
        return (f"t:{self.tenant_id}", f"u:{self.user_id}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionCache:
    """Sessions this process resolved in the last `ttl_s` seconds, so that a burst of requests
    (autosave) costs one Redis lookup, not one each.

    Revocation stays immediate: a logout is published to every process (`Accounts.listen`), and
    the cache is consulted only while that subscription is live; it is emptied whenever the
    subscription drops. `epoch` counts revocations, so a lookup that raced one is not cached.
    """

    MAX_ENTRIES = 100_000

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: dict[str, tuple[float, Principal]] = {}
        self.live = False
        self.epoch = 0

    def get(self, key: str) -> Principal | None:
        if not self.live:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, principal: Principal, epoch: int) -> None:
        if not self.live or epoch != self.epoch or self._ttl_s <= 0:
            return
        now = time.monotonic()
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries = {k: e for k, e in self._entries.items() if e[0] >= now}
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
        self._entries[key] = (now + self._ttl_s, principal)

    def revoke(self, key: str) -> None:
        self.epoch += 1
        self._entries.pop(key, None)

    def set_live(self, live: bool) -> None:
        # Either way, what was cached may have missed revocations: start empty.
        self.epoch += 1
        self._entries.clear()
        self.live = live


class Accounts:
    def __init__(self, settings: Settings, redis: Redis, db: asyncpg.Pool, keys: Keys) -> None:
        self._redis = redis
        # Where revocations are heard: a cluster client has no pubsub() (shared/infra/clients.py).
        # Created lazily by redis-py: no connection until listen() subscribes.
        self._subscriber = pubsub_client(settings) if settings.redis_cluster else redis
        self._db = db
        self._keys = keys
        self._session_ttl_ms = settings.session_ttl_s * 1000
        # Never long enough to outlive the session itself in Redis.
        self.sessions = SessionCache(min(settings.session_cache_s, settings.session_ttl_s / 2))
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        # A fixed hash to verify against when the user does not exist, so that a login for an
        # unknown name costs as much as one for a known name (no user enumeration by timing).
        self._decoy = self._hasher.hash(secrets.token_hex(16))

    async def _hash(self, password: str) -> str:
        # argon2 is deliberately slow and memory-hard: keep it off the event loop.
        return await asyncio.to_thread(self._hasher.hash, password)

    async def _verify(self, stored: str, password: str) -> bool:
        try:
            return await asyncio.to_thread(self._hasher.verify, stored, password)
        except (VerificationError, InvalidHashError):
            return False

    async def signup(self, username: str, password: str) -> tuple[Principal, str]:
        password_hash = await self._hash(password)
        principal = Principal(str(uuid.uuid4()), str(uuid.uuid4()), username, "owner")
        async with self._db.acquire() as conn, conn.transaction():
            await queries.insert_tenant(conn, principal.tenant_id, f"{username}'s team")
            await self._insert_user(conn, principal, password_hash)
        return principal, await self.open_session(principal)

    async def add_member(self, owner: Principal, username: str, password: str) -> Principal:
        password_hash = await self._hash(password)
        member = Principal(str(uuid.uuid4()), owner.tenant_id, username, "member")
        async with self._db.acquire() as conn:
            await self._insert_user(conn, member, password_hash)
        return member

    @staticmethod
    async def _insert_user(conn: queries.Conn, who: Principal, password_hash: str) -> None:
        try:
            await queries.insert_user(
                conn, who.user_id, who.tenant_id, who.username, password_hash, who.role
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"username {who.username!r} is taken") from None

    async def login(self, username: str, password: str) -> tuple[Principal, str]:
        async with self._db.acquire() as conn:
            row = await queries.user_by_username(conn, username)
        if row is None:
            await self._verify(self._decoy, password)
            raise Unauthenticated("wrong username or password")
        if not await self._verify(row["password_hash"], password):
            raise Unauthenticated("wrong username or password")
        principal = Principal(str(row["id"]), str(row["tenant_id"]), row["username"], row["role"])
        return principal, await self.open_session(principal)

    async def open_session(self, principal: Principal) -> str:
        token = secrets.token_urlsafe(32)
        await self._redis.set(
            self._keys.session(token_hash(token)),
            json.dumps(asdict(principal)),
            px=self._session_ttl_ms,
        )
        return token

    async def resolve(self, token: str) -> Principal:
        """The session's user; a lookup slides the expiry forward (one round trip: GETEX).
        A session resolved in the last `session_cache_s` is answered from memory."""
        hashed = token_hash(token)
        cached = self.sessions.get(hashed)
        if cached is not None:
            return cached
        epoch = self.sessions.epoch
        raw = await self._redis.getex(self._keys.session(hashed), px=self._session_ttl_ms)
        if raw is None:
            raise Unauthenticated("unknown or expired token")
        principal = Principal(**json.loads(raw))
        self.sessions.put(hashed, principal, epoch)
        return principal

    async def close_session(self, token: str) -> None:
        hashed = token_hash(token)
        self.sessions.revoke(hashed)
        await self._redis.delete(self._keys.session(hashed))
        # After the delete: a process that looks the session up again now finds it gone.
        await self._redis.publish(self._keys.sessions_revoked, hashed)

    async def listen(
        self,
        retry_s: float = 1.0,
        *,
        on_revoked: Callable[[str], None] | None = None,
        on_live: Callable[[bool], None] | None = None,
    ) -> None:
        """Drop revoked sessions from this process's cache as they are published; run as a task
        for the life of the process. The cache is used only while subscribed.

        `on_revoked(token hash)` hears each revocation too (the matcher ends that session's
        sockets); `on_live(True)` once subscribed, `on_live(False)` when the subscription is
        lost: revocations published meanwhile are never heard, so a listener must check what it
        holds itself, on both (cluster mode too: `_subscriber` is a plain connection there)."""

        def live(now: bool) -> None:
            self.sessions.set_live(now)
            if on_live is not None:
                on_live(now)

        listener = Listener(
            "session revocations (session cache off meanwhile)",
            on_up=lambda: live(True),
            on_down=lambda: live(False),
            first_delay_s=retry_s,
            max_delay_s=max(retry_s, 2.0),
        )

        async def session() -> None:
            async with self._subscriber.pubsub() as pubsub:
                await pubsub.subscribe(self._keys.sessions_revoked)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    listener.check()
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        listener.up()
                    elif message["type"] == "message":
                        self.sessions.revoke(message["data"])
                        if on_revoked is not None:
                            on_revoked(message["data"])

        await listener.run(session)
