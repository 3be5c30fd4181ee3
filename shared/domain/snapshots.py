"""Named revisions of documents, kept in Postgres (the SQL is shared/store/queries.py's)."""

from __future__ import annotations

import uuid

from shared.domain.models import SnapshotDetail, SnapshotOut
from shared.store import queries
from shared.store.queries import Conn, Record


async def insert(
    conn: Conn, doc_id: str, label: str, content: str, version: int, by: str, job_id: str
) -> str:
    """Store a revision once per job: a rerun of the same job returns the first row's id."""
    snapshot_id = str(uuid.uuid4())
    return await queries.insert_snapshot(
        conn, snapshot_id, doc_id, label, content, version, by, job_id
    )


def _out(row: Record) -> SnapshotOut:
    return SnapshotOut(**{k: row[k] for k in SnapshotOut.model_fields})


async def newest(conn: Conn, doc_id: str, limit: int) -> list[SnapshotOut]:
    return [_out(r) for r in await queries.snapshots(conn, doc_id, limit)]


async def one(conn: Conn, doc_id: str, snapshot_id: str) -> SnapshotDetail | None:
    row = await queries.snapshot(conn, doc_id, snapshot_id)
    return None if row is None else SnapshotDetail(**dict(row))
