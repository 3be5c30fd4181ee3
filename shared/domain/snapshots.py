"""Named revisions of documents, in Postgres."""

from __future__ import annotations

import uuid

from shared.domain.models import SnapshotDetail, SnapshotOut
from shared.store.queries import Conn, Record

_COLUMNS = "id::text, document_id::text, label, version, created_by::text, created_at"


async def insert(
    conn: Conn, doc_id: str, label: str, content: str, version: int, by: str, job_id: str
) -> str:
    """Store a revision once per job: a rerun of the same job returns the first row's id."""
    row = await conn.fetchrow(
        "INSERT INTO document_snapshots"
        " (id, document_id, label, content, version, created_by, job_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (job_id) DO UPDATE SET job_id = EXCLUDED.job_id"
        " RETURNING id::text",
        str(uuid.uuid4()),
        doc_id,
        label,
        content,
        version,
        by,
        job_id,
    )
    assert row is not None
    return str(row[0])


def _out(row: Record) -> SnapshotOut:
    return SnapshotOut(**{k: row[k] for k in SnapshotOut.model_fields})


async def newest(conn: Conn, doc_id: str, limit: int) -> list[SnapshotOut]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM document_snapshots WHERE document_id = $1"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        doc_id,
        limit,
    )
    return [_out(r) for r in rows]


async def one(conn: Conn, doc_id: str, snapshot_id: str) -> SnapshotDetail | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, content FROM document_snapshots WHERE document_id = $1 AND id = $2",
        doc_id,
        snapshot_id,
    )
    return None if row is None else SnapshotDetail(**dict(row))
