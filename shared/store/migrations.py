"""Numbered `.sql` migrations, applied in order under an advisory lock so that any number of
processes may start at once."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from shared.store import queries

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# An arbitrary constant shared by every Redline process: "redline migrations".
_LOCK_ID = 0x7265646C696E65
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise RuntimeError(f"migration file name must look like 001_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), path.name, path.read_text()))
    numbers = [m.number for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps: {numbers}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply every pending migration; return the names applied by this call."""
    applied: list[str] = []
    await queries.advisory_lock(conn, _LOCK_ID)
    try:
        done = await queries.applied_migrations(conn)
        for migration in available():
            if migration.number in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await queries.record_migration(conn, migration.number, migration.name)
            log.info("applied migration %s", migration.name)
            applied.append(migration.name)
    finally:
        await queries.advisory_unlock(conn, _LOCK_ID)
    return applied


async def migrate_url(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
