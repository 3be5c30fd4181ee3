"""The live interest pool, one per language, in the state Redis. Each call is one Lua script on the
language's hash tag (shared/store/lua/match.lua, pool_refresh.lua, pool_leave.lua); this module
adds the settings, the clock and the language and interest normalisation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.infra.clock import Clock, now_ms
from shared.settings import Settings
from shared.store.scripts import MatchReply, Scripts

_LANGUAGE = re.compile(r"^[a-z]{2,3}$")
_SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MAX_INTERESTS = 20


def language_key(language: str | None) -> str:
    """The pool a profile language maps to. Anything odd goes to `und` (undetermined, as in
    BCP 47), never into a key name: a brace in it would break the hash tag."""
    lang = (language or "").strip().lower()
    return lang if _LANGUAGE.match(lang) else "und"


def clean_interests(slugs: Iterable[str]) -> tuple[str, ...]:
    """Unique valid slugs in their given order, at most MAX_INTERESTS (a slug goes into a key name
    and into the entry's `,`-separated list, so nothing else may get through)."""
    seen: dict[str, None] = {}
    for slug in slugs:
        if _SLUG.match(slug) and len(slug) <= 40:
            seen.setdefault(slug, None)
    return tuple(seen)[:MAX_INTERESTS]


@dataclass(frozen=True, slots=True)
class PoolEntry:
    """What a user brings to a pool: one ticket per connection, so a stale connection of the
    same user can neither refresh nor remove a newer one's entry."""

    user_id: str
    ticket: str
    region: str = ""
    wanted_region: str = ""
    interests: tuple[str, ...] = ()


class Pool:
    def __init__(self, settings: Settings, scripts: Scripts, clock: Clock = now_ms) -> None:
        self._scripts = scripts
        self._clock = clock
        self._ttl_ms = settings.pool_ttl_s * 1000
        self._scan = settings.match_scan_limit
        self._claim_ttl_ms = settings.match_inbox_ttl_s * 1000

    async def enter(self, language: str, entry: PoolEntry, *, requeue: bool = False) -> MatchReply:
        """Be findable, unless a match has claimed this ticket (CLAIMED). `requeue`: that match
        was called off (its room could not be opened), so the ticket is back in the pool."""
        return await self._match(language, entry, scan_limit=0, requeue=requeue)

    async def find(self, language: str, entry: PoolEntry) -> MatchReply:
        """Claim the best partner for `entry`, or leave it waiting in the pool; CLAIMED when a
        match has claimed this ticket already (a ticket is matched once)."""
        return await self._match(language, entry, scan_limit=self._scan, requeue=False)

    async def _match(
        self, language: str, entry: PoolEntry, *, scan_limit: int, requeue: bool
    ) -> MatchReply:
        return await self._scripts.match(
            language,
            entry.user_id,
            entry.ticket,
            region=entry.region,
            wanted_region=entry.wanted_region,
            interests=entry.interests,
            now_ms=self._clock(),
            ttl_ms=self._ttl_ms,
            scan_limit=scan_limit,
            requeue=requeue,
            claim_ttl_ms=self._claim_ttl_ms,
        )

    async def refresh(self, language: str, owners: Sequence[tuple[str, str]]) -> list[str]:
        return await self._scripts.pool_refresh(language, owners, self._clock() + self._ttl_ms)

    async def leave(self, language: str, user_id: str, ticket: str) -> bool:
        return await self._scripts.pool_leave(language, user_id, ticket)
