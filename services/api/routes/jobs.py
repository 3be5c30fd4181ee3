"""Work that takes longer than a request: save now and snapshots answer 202 with a job id at
once, the flusher does the work, and `GET /v1/jobs/{id}` tells how it went."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse

from services.api.deps import Caller, Res, parsed_body
from services.api.problems import responses
from shared.domain import snapshots
from shared.domain.errors import NotFound
from shared.domain.jobs import enqueue_save, enqueue_snapshot, job_state
from shared.domain.models import JobAccepted, JobOut, SnapshotCreate, SnapshotDetail, SnapshotOut

router = APIRouter(tags=["jobs"], responses=responses(401, 503))


def _queued(*errors: int) -> dict[int | str, dict[str, Any]]:
    location = {"schema": {"type": "string"}, "required": True, "description": "the job's URL"}
    return {202: {"headers": {"Location": location}}, **responses(*errors)}


def _accepted(job_id: str) -> JSONResponse:
    # The enqueue has returned, so the job is in Redis: a worker will run it.
    body = JobAccepted(job_id=job_id, status="queued").model_dump()
    return JSONResponse(body, status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


@router.post(
    "/v1/documents/{doc_id}/save",
    status_code=202,
    response_model=JobAccepted,
    responses=_queued(404, 422),
)
async def save(doc_id: UUID, who: Caller, res: Res) -> JSONResponse:
    current = await res.documents.status(who, str(doc_id))  # 404 unless the caller may open it
    return _accepted(await enqueue_save(res.queue, res.keys, who, str(doc_id), current.version))


@router.post(
    "/v1/documents/{doc_id}/snapshots",
    status_code=202,
    response_model=JobAccepted,
    responses=_queued(404, 413, 422, 429),
)
async def snapshot(
    doc_id: UUID,
    who: Caller,
    body: Annotated[SnapshotCreate, parsed_body(SnapshotCreate)],
    res: Res,
) -> JSONResponse:
    await res.limiter.hit(res.limiter.snapshot, who.user_id)  # per user (REDLINE_SNAPSHOT_RATE)
    current = await res.documents.status(who, str(doc_id))
    job_id = await enqueue_snapshot(
        res.queue, res.keys, who, str(doc_id), current.version, body.label
    )
    return _accepted(job_id)


@router.get(
    "/v1/documents/{doc_id}/snapshots",
    response_model=list[SnapshotOut],
    responses=responses(404, 422),
)
async def list_snapshots(
    doc_id: UUID, who: Caller, res: Res, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> list[SnapshotOut]:
    await res.documents.status(who, str(doc_id))
    async with res.db.acquire() as conn:
        return await snapshots.newest(conn, str(doc_id), limit)


@router.get(
    "/v1/documents/{doc_id}/snapshots/{snapshot_id}",
    response_model=SnapshotDetail,
    responses=responses(404, 422),
)
async def read_snapshot(doc_id: UUID, snapshot_id: UUID, who: Caller, res: Res) -> SnapshotDetail:
    await res.documents.status(who, str(doc_id))
    async with res.db.acquire() as conn:
        found = await snapshots.one(conn, str(doc_id), str(snapshot_id))
    if found is None:
        raise NotFound(f"snapshot {snapshot_id} not found")
    return found


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=responses(422))
async def job(job_id: Annotated[str, Path(max_length=300)], who: Caller, res: Res) -> JobOut:
    return await job_state(res.queue, res.keys, res.documents, who, job_id)
