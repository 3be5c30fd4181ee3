"""Every SQL statement the services run, in small functions (the schema itself is in the migration
files, shared/store/migrations/NNN_*.sql). Each takes a connection, so the caller decides the
transaction; a function opens one itself only where its statements are wrong outside one
(`write_documents`: its COPY buffer empties at commit and its SET LOCAL lasts one transaction).
Inside a transaction of the caller's that is a savepoint, so the caller's transaction still
decides what commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Record = asyncpg.Record
# A plain connection or one borrowed from a pool: every function here takes either.
Conn = asyncpg.Connection | PoolConnectionProxy

# Rows the flusher writes, in the column order of the flush_buffer temp table.
# id, content, version, updated_by, updated_at, and for a co-edited document its Yjs state and
# the last update-log id folded into it (None for the others).
FlushRow = tuple[str, str, int, str | None, datetime, bytes | None, str | None]

# toast_tuple_target: a row under a page is stored as is. The default (about 2 KB) made the COPY
# pglz-compress every 2 KB document on its way through this buffer: 25 us a row, most of the COPY.
FLUSH_BUFFER_DDL = """
CREATE TEMP TABLE IF NOT EXISTS flush_buffer (
    id uuid, content text, version bigint, updated_by uuid, updated_at timestamptz,
    ystate bytea, ylog text
) WITH (toast_tuple_target = 8160) ON COMMIT DELETE ROWS
"""


async def insert_tenant(conn: Conn, tenant_id: str, name: str) -> None:
    await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, $2)", tenant_id, name)


async def insert_user(
    conn: Conn,
    user_id: str,
    tenant_id: str,
    username: str,
    password_hash: str,
    role: str,
) -> None:
    await conn.execute(
        "INSERT INTO users (id, tenant_id, username, password_hash, role)"
        " VALUES ($1, $2, $3, $4, $5)",
        user_id,
        tenant_id,
        username,
        password_hash,
        role,
    )


async def user_by_username(conn: Conn, username: str) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, tenant_id, username, password_hash, role FROM users"
        " WHERE lower(username) = lower($1)",
        username,
    )


async def insert_document(
    conn: Conn,
    doc_id: str,
    tenant_id: str | None,
    title: str,
    content: str,
    created_by: str,
) -> Record:
    row = await conn.fetchrow(
        "INSERT INTO documents (id, tenant_id, title, content, version, updated_by)"
        " VALUES ($1, $2, $3, $4, 0, $5)"
        " RETURNING id, tenant_id, title, content, version, updated_by, updated_at, created_at",
        doc_id,
        tenant_id,
        title,
        content,
        created_by,
    )
    assert row is not None
    return row


async def add_document_members(conn: Conn, doc_id: str, user_ids: Sequence[str]) -> list[str]:
    """Add room members; return the ones this call added, in id order (as `document` lists them:
    for a new document, all of its members)."""
    added: list[str] = await conn.fetchval(
        "WITH added AS (INSERT INTO document_members (document_id, user_id)"
        "  SELECT $1, u FROM unnest($2::uuid[]) AS u ON CONFLICT DO NOTHING RETURNING user_id)"
        " SELECT ARRAY(SELECT user_id::text FROM added ORDER BY user_id)",
        doc_id,
        list(user_ids),
    )
    return added


async def document(conn: Conn, doc_id: str) -> Record | None:
    """A document with its room members (an empty array for tenant documents)."""
    return await conn.fetchrow(
        "SELECT d.id, d.tenant_id, d.title, d.content, d.version, d.updated_by, d.updated_at,"
        " d.created_at, d.ystate, d.ylog, ARRAY(SELECT m.user_id FROM document_members m"
        "  WHERE m.document_id = d.id ORDER BY m.user_id) AS members"
        " FROM documents d WHERE d.id = $1",
        doc_id,
    )


async def tenant_documents(
    conn: Conn,
    tenant_id: str,
    limit: int,
    after: tuple[datetime, str] | None,
) -> list[Record]:
    """One page of a tenant's documents, newest first, by keyset (created_at, id)."""
    if after is None:
        return await conn.fetch(
            "SELECT id, title, version, updated_at, created_at FROM documents"
            " WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2",
            tenant_id,
            limit,
        )
    return await conn.fetch(
        "SELECT id, title, version, updated_at, created_at FROM documents"
        " WHERE tenant_id = $1 AND (created_at, id) < ($3, $4::uuid)"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        tenant_id,
        limit,
        after[0],
        after[1],
    )


async def delete_document(conn: Conn, doc_id: str) -> bool:
    status = await conn.execute("DELETE FROM documents WHERE id = $1", doc_id)
    return bool(status != "DELETE 0")


# Profiles: every user has one; a user without a profiles row reads as the defaults below.
_PROFILE = """
SELECT u.id::text AS user_id, u.tenant_id::text AS tenant_id, u.username,
       coalesce(p.display_name, '') AS display_name, coalesce(p.bio, '') AS bio,
       coalesce(p.language, 'en') AS language, p.region,
       coalesce(p.interests, '{}') AS interests, coalesce(p.updated_at, u.created_at) AS updated_at
FROM users u LEFT JOIN profiles p ON p.user_id = u.id
"""

# The columns `upsert_profile` may set; its statement is built only from these names.
PROFILE_COLUMNS = ("display_name", "bio", "language", "region", "interests")


async def profile(conn: Conn, user_id: str) -> Record | None:
    """The user's profile, or None when there is no such user."""
    return await conn.fetchrow(_PROFILE + " WHERE u.id = $1", user_id)


async def profiles(conn: Conn, user_ids: Sequence[str]) -> list[Record]:
    return await conn.fetch(_PROFILE + " WHERE u.id = any($1::uuid[])", list(user_ids))


async def upsert_profile(conn: Conn, user_id: str, changes: Mapping[str, object]) -> None:
    """Set the given columns of the user's profile (the others keep their values)."""
    columns = [c for c in PROFILE_COLUMNS if c in changes]
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


async def recently_seen_users(conn: Conn, limit: int) -> list[str]:
    rows = await conn.fetch("SELECT id::text FROM users ORDER BY last_seen_at DESC LIMIT $1", limit)
    return [r[0] for r in rows]


async def touch_user(conn: Conn, user_id: str) -> None:
    await conn.execute("UPDATE users SET last_seen_at = now() WHERE id = $1", user_id)


# Snapshots: named revisions of documents.
_SNAPSHOT = "id::text, document_id::text, label, version, created_by::text, created_at"


async def insert_snapshot(
    conn: Conn,
    snapshot_id: str,
    doc_id: str,
    label: str,
    content: str,
    version: int,
    by: str,
    job_id: str,
) -> str:
    """Store a revision once per job: a rerun of the same job returns the first row's id."""
    row = await conn.fetchrow(
        "INSERT INTO document_snapshots"
        " (id, document_id, label, content, version, created_by, job_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (job_id) DO UPDATE SET job_id = EXCLUDED.job_id"
        " RETURNING id::text",
        snapshot_id,
        doc_id,
        label,
        content,
        version,
        by,
        job_id,
    )
    assert row is not None
    return str(row[0])


async def snapshots(conn: Conn, doc_id: str, limit: int) -> list[Record]:
    """A document's newest snapshots first, without their content."""
    return await conn.fetch(
        f"SELECT {_SNAPSHOT} FROM document_snapshots WHERE document_id = $1"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        doc_id,
        limit,
    )


async def snapshot(conn: Conn, doc_id: str, snapshot_id: str) -> Record | None:
    """One snapshot of the document, with its content."""
    return await conn.fetchrow(
        f"SELECT {_SNAPSHOT}, content FROM document_snapshots WHERE document_id = $1 AND id = $2",
        doc_id,
        snapshot_id,
    )


# Rows of the buffer the guarded UPDATE skipped because Postgres holds a later version, or the
# same version with other text: not a retried or concurrent write of the same history (one
# history gives one text a version) unless Redis, the flusher's caller judges, is past it.
_CONFLICTS = """
SELECT d.id::text AS id, d.version FROM documents d JOIN flush_buffer b ON d.id = b.id
WHERE d.version > b.version OR (d.version = b.version AND d.content IS DISTINCT FROM b.content)
"""


async def write_documents(
    conn: Conn, rows: Sequence[FlushRow], conflicts: dict[str, int] | None = None
) -> int:
    """Write a batch of flushed documents in one statement; return how many rows changed.

    COPY into a per-connection temp table, then one UPDATE joined to it: the fastest bulk path
    (see the flush benchmark). The version guard makes the write idempotent and safe to run
    concurrently: Postgres never goes backwards, and a deleted row is never recreated.
    With `conflicts`, a batch the guard did not write whole also fills it with id -> Postgres's
    version for the rows at a later version or at the same version with other text (a second
    query, in the same transaction, only then).
    """
    # In id order: the UPDATE below probes `documents` row by row in the buffer's order, so every
    # writer (flusher batches, per-document flushes, other flushers) locks shared rows in one
    # order and none can hold one row while waiting for another's (a deadlock, seen between two
    # flushers and reproduced in tests/services/flusher/test_flush.py).
    ordered = sorted(rows, key=lambda row: row[0])
    async with conn.transaction():
        await conn.copy_records_to_table(
            "flush_buffer",
            records=ordered,
            columns=("id", "content", "version", "updated_by", "updated_at", "ystate", "ylog"),
        )
        # The buffer has no statistics, and the planner guesses it from its size: for 2 KB rows
        # a guess big enough to hash-join against a sequential scan of all of `documents`
        # (measured: 58 of 78 ms a batch at 100k documents, growing with the table). A batch
        # always wants one primary-key probe a row. (Its own statement, so the UPDATE reads as
        # itself in pg_stat_activity; one round trip a batch.)
        await conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        status = await conn.execute(
            "UPDATE documents d SET content = b.content, version = b.version,"
            " updated_by = b.updated_by, updated_at = b.updated_at,"
            # A document once co-edited stays so: a row without a state keeps the stored one.
            " ystate = COALESCE(b.ystate, d.ystate), ylog = COALESCE(b.ylog, d.ylog)"
            " FROM flush_buffer b WHERE d.id = b.id AND d.version < b.version"
        )
        written = int(status.split()[-1])
        if conflicts is not None and written < len(ordered):
            conflicts.update({r["id"]: r["version"] for r in await conn.fetch(_CONFLICTS)})
    return written


async def prepare_flush_connection(conn: Conn) -> None:
    """Pool `init` for flushers: the COPY target exists on every connection."""
    await conn.execute(FLUSH_BUFFER_DDL)


async def ping(conn: Conn) -> bool:
    """A round trip that touches no table: readiness probes."""
    return bool(await conn.fetchval("SELECT 1") == 1)


# Migrations' bookkeeping (shared/store/migrations.py applies the files).
async def advisory_lock(conn: Conn, key: int) -> None:
    """Wait for the session-level advisory lock `key` (held until `advisory_unlock`)."""
    await conn.execute("SELECT pg_advisory_lock($1)", key)


async def advisory_unlock(conn: Conn, key: int) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", key)


async def applied_migrations(conn: Conn) -> set[int]:
    """The numbers of the migrations applied so far (creating their table on first use)."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " number int PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {r["number"] for r in await conn.fetch("SELECT number FROM schema_migrations")}


async def record_migration(conn: Conn, number: int, name: str) -> None:
    await conn.execute("INSERT INTO schema_migrations (number, name) VALUES ($1, $2)", number, name)
