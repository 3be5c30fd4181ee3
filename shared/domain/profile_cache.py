"""Profiles read through the cache (family "profile"), written to Postgres then invalidated.
The api reads and writes through this; the flusher's warming job preloads through it."""

from __future__ import annotations

import asyncpg

from shared.domain import profiles
from shared.domain.errors import InvalidInput, NotFound, Unavailable
from shared.domain.models import Profile, ProfilePatch
from shared.infra.cache import Cache, Family
from shared.infra.dependencies import REDIS_DOWN
from shared.settings import Settings

NULLABLE = {"region"}


class ProfileCache:
    def __init__(self, settings: Settings, cache: Cache, db: asyncpg.Pool) -> None:
        self.cache = cache
        self._db = db
        self.family = Family.of_model(
            "profile", Profile, settings.profile_cache_ttl_s, settings.cache_negative_ttl_s
        )

    async def _load(self, user_id: str) -> Profile | None:
        async with self._db.acquire() as conn:
            return await profiles.load(conn, user_id)

    async def _load_many(self, user_ids: list[str]) -> dict[str, Profile]:
        async with self._db.acquire() as conn:
            return {p.user_id: p for p in await profiles.load_many(conn, user_ids)}

    async def get(self, user_id: str) -> Profile:
        profile = await self.cache.get(self.family, user_id, lambda: self._load(user_id))
        if profile is None:
            raise NotFound("no such user")
        return profile

    async def update(self, user_id: str, patch: ProfilePatch) -> Profile:
        """Commit, then invalidate: a reader after this returns sees the new row. If the cache
        cannot be invalidated this is Unavailable (503): the row is saved, and repeating the
        PATCH, which is idempotent, completes the invalidation."""
        changes = patch.model_dump(exclude_unset=True)
        for name, value in changes.items():
            if value is None and name not in NULLABLE:
                raise InvalidInput(f"{name} may not be null")
        if "interests" in changes:
            changes["interests"] = list(dict.fromkeys(changes["interests"]))
        async with self._db.acquire() as conn:
            async with conn.transaction():
                await profiles.save(conn, user_id, changes)
            profile = await profiles.load(conn, user_id)
        if profile is None:
            raise NotFound("no such user")
        try:
            await self.cache.invalidate(self.family, user_id)
        except REDIS_DOWN as exc:
            raise Unavailable(
                "the profile was saved but the cache could not be invalidated; repeat the request",
                dependency="cache",
            ) from exc
        return profile

    async def warm(self, limit: int) -> int:
        """Preload the profiles of the `limit` most recently seen users; returns how many."""
        async with self._db.acquire() as conn:
            user_ids = await profiles.recently_seen(conn, limit)
        return await self.cache.warm(self.family, user_ids, self._load_many)

    async def touch(self, user_id: str) -> None:
        async with self._db.acquire() as conn:
            await profiles.touch(conn, user_id)
