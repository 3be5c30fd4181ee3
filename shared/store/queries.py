"""SQL, as SQL, in small functions. Each takes a connection so the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Record = asyncpg.Record
# A plain connection or one borrowed from a pool: every function here takes either.
Conn = asyncpg.Connection | PoolConnectionProxy

# Rows the flusher writes, in the column order of the flush_buffer temp table.
FlushRow = tuple[str, str, int, str | None, datetime]

# toast_tuple_target: a row under a page is stored as is. The default (about 2 KB) made the COPY
# pglz-compress every 2 KB document on its way through this buffer: 25 us a row, most of the COPY.
FLUSH_BUFFER_DDL = """
CREATE TEMP TABLE IF NOT EXISTS flush_buffer (
    id uuid, content text, version bigint, updated_by uuid, updated_at timestamptz
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


async def add_document_members(conn: Conn, doc_id: str, user_ids: Sequence[str]) -> None:
    await conn.execute(
        "INSERT INTO document_members (document_id, user_id)"
        " SELECT $1, u FROM unnest($2::uuid[]) AS u ON CONFLICT DO NOTHING",
        doc_id,
        list(user_ids),
    )


async def document(conn: Conn, doc_id: str) -> Record | None:
    """A document with its room members (an empty array for tenant documents)."""
    return await conn.fetchrow(
        "SELECT d.id, d.tenant_id, d.title, d.content, d.version, d.updated_by, d.updated_at,"
        " d.created_at, ARRAY(SELECT m.user_id FROM document_members m"
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


async def write_documents(conn: Conn, rows: Sequence[FlushRow]) -> int:
    """Write a batch of flushed documents in one statement; return how many rows changed.

    COPY into a per-connection temp table, then one UPDATE joined to it: the fastest bulk path
    (see the flush benchmark). The version guard makes the write idempotent and safe to run
    concurrently: Postgres never goes backwards, and a deleted row is never recreated.
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
            columns=("id", "content", "version", "updated_by", "updated_at"),
        )
        # The buffer has no statistics, and the planner guesses it from its size: for 2 KB rows
        # a guess big enough to hash-join against a sequential scan of all of `documents`
        # (measured: 58 of 78 ms a batch at 100k documents, growing with the table). A batch
        # always wants one primary-key probe a row. (Its own statement, so the UPDATE reads as
        # itself in pg_stat_activity; one round trip a batch.)
        await conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        status = await conn.execute(
            "UPDATE documents d SET content = b.content, version = b.version,"
            " updated_by = b.updated_by, updated_at = b.updated_at"
            " FROM flush_buffer b WHERE d.id = b.id AND d.version < b.version"
        )
    return int(status.split()[-1])


async def prepare_flush_connection(conn: Conn) -> None:
    """Pool `init` for flushers: the COPY target exists on every connection."""
    await conn.execute(FLUSH_BUFFER_DDL)
