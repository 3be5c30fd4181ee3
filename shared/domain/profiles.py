"""Profiles and interests. Every user has one: a user without a row has the default (the SQL is
shared/store/queries.py's)."""

from __future__ import annotations

from collections.abc import Sequence

from shared.domain.models import Profile
from shared.store import queries
from shared.store.queries import Conn, Record


def _profile(row: Record) -> Profile:
    return Profile(**dict(row))


async def load(conn: Conn, user_id: str) -> Profile | None:
    """The user's profile, or None when there is no such user."""
    row = await queries.profile(conn, user_id)
    return None if row is None else _profile(row)


async def load_many(conn: Conn, user_ids: Sequence[str]) -> list[Profile]:
    return [_profile(r) for r in await queries.profiles(conn, user_ids)]


async def recently_seen(conn: Conn, limit: int) -> list[str]:
    return await queries.recently_seen_users(conn, limit)


async def touch(conn: Conn, user_id: str) -> None:
    await queries.touch_user(conn, user_id)


async def save(conn: Conn, user_id: str, changes: dict[str, object]) -> None:
    """Upsert the given columns of the user's profile (the others keep their values)."""
    await queries.upsert_profile(conn, user_id, changes)
