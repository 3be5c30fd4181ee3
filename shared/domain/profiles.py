"""Profiles and interests in Postgres. Every user has one: a user without a row has the default."""

from __future__ import annotations

from collections.abc import Sequence

from shared.domain.models import Profile
from shared.store.queries import Conn, Record

_SELECT = """
SELECT u.id::text AS user_id, u.tenant_id::text AS tenant_id, u.username,
       coalesce(p.display_name, '') AS display_name, coalesce(p.bio, '') AS bio,
       coalesce(p.language, 'en') AS language, p.region,
       coalesce(p.interests, '{}') AS interests, coalesce(p.updated_at, u.created_at) AS updated_at
FROM users u LEFT JOIN profiles p ON p.user_id = u.id
"""


def _profile(row: Record) -> Profile:
    return Profile(**dict(row))


async def load(conn: Conn, user_id: str) -> Profile | None:
    """The user's profile, or None when there is no such user."""
    row = await conn.fetchrow(_SELECT + " WHERE u.id = $1", user_id)
    return None if row is None else _profile(row)


async def load_many(conn: Conn, user_ids: Sequence[str]) -> list[Profile]:
    rows = await conn.fetch(_SELECT + " WHERE u.id = any($1::uuid[])", list(user_ids))
    return [_profile(r) for r in rows]


async def recently_seen(conn: Conn, limit: int) -> list[str]:
    rows = await conn.fetch("SELECT id::text FROM users ORDER BY last_seen_at DESC LIMIT $1", limit)
    return [r[0] for r in rows]


async def touch(conn: Conn, user_id: str) -> None:
    await conn.execute("UPDATE users SET last_seen_at = now() WHERE id = $1", user_id)


# The columns a PATCH may set; the statement below is built only from these names.
PATCHABLE = ("display_name", "bio", "language", "region", "interests")


async def save(conn: Conn, user_id: str, changes: dict[str, object]) -> None:
    """Upsert the given columns of the user's profile (the others keep their values)."""
    columns = [c for c in PATCHABLE if c in changes]
    values = [changes[c] for c in columns]
    names = "".join(f", {c}" for c in columns)
    params = "".join(f", ${i}" for i in range(2, len(columns) + 2))
    updates = "".join(f"{c} = EXCLUDED.{c}, " for c in columns)
    await conn.execute(
        f"INSERT INTO profiles (user_id{names}) VALUES ($1{params})"
        f" ON CONFLICT (user_id) DO UPDATE SET {updates}updated_at = now()",
        user_id,
        *values,
    )
