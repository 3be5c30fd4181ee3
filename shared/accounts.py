"""Users, tenants, password hashing and sessions (opaque tokens, stored hashed, sliding expiry)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import uuid
from dataclasses import asdict, dataclass
from typing import Literal

import asyncpg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from shared import queries
from shared.errors import Conflict, Unauthenticated
from shared.keys import Keys
from shared.settings import Settings

Role = Literal["owner", "member"]


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


class Accounts:
    def __init__(self, settings: Settings, redis: Redis, pool: asyncpg.Pool, keys: Keys) -> None:
        self._redis = redis
        self._pool = pool
        self._keys = keys
        self._session_ttl_ms = settings.session_ttl_s * 1000
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
        async with self._pool.acquire() as conn, conn.transaction():
            await queries.insert_tenant(conn, principal.tenant_id, f"{username}'s team")
            await self._insert_user(conn, principal, password_hash)
        return principal, await self.open_session(principal)

    async def add_member(self, owner: Principal, username: str, password: str) -> Principal:
        password_hash = await self._hash(password)
        member = Principal(str(uuid.uuid4()), owner.tenant_id, username, "member")
        async with self._pool.acquire() as conn:
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
        async with self._pool.acquire() as conn:
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
        """The session's user; each use slides the expiry forward (one round trip: GETEX)."""
        raw = await self._redis.getex(
            self._keys.session(token_hash(token)), px=self._session_ttl_ms
        )
        if raw is None:
            raise Unauthenticated("unknown or expired token")
        return Principal(**json.loads(raw))

    async def close_session(self, token: str) -> None:
        await self._redis.delete(self._keys.session(token_hash(token)))
