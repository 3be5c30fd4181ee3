"""Documents: create, list, read, autosave edits, presence, status, delete."""

from __future__ import annotations

import logging
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response
from redis.exceptions import RedisError

from services.api.deps import Caller, Res, parsed_body
from services.api.edit import EditRoute
from services.api.problems import responses
from shared.domain.jobs import enqueue_flush
from shared.domain.models import (
    ContentEdit,
    DocumentCreate,
    DocumentOut,
    DocumentPage,
    EditOut,
    PresenceOut,
    StatusOut,
)

# Every route: signed in (401), and served from Redis and Postgres (503 while one is down).
router = APIRouter(prefix="/v1/documents", tags=["documents"], responses=responses(401, 503))
log = logging.getLogger("redline.api")


@router.post("", status_code=201, response_model=DocumentOut, responses=responses(413, 422, 429))
async def create(
    who: Caller, body: Annotated[DocumentCreate, parsed_body(DocumentCreate)], res: Res
) -> DocumentOut:
    await res.limiter.hit(res.limiter.create, who.user_id)  # per user (REDLINE_CREATE_RATE)
    return await res.documents.create(who, body.title, body.content)


@router.get("", response_model=DocumentPage, responses=responses(422))
async def list_documents(
    who: Caller,
    res: Res,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> DocumentPage:
    return await res.documents.page(who, limit, cursor)


@router.get("/{doc_id}", response_model=DocumentOut, responses=responses(404, 422))
async def read(doc_id: UUID, who: Caller, res: Res) -> DocumentOut:
    return await res.documents.read(who, str(doc_id))


# What OpenAPI says of the edit: FastAPI reads this signature only to document it (the id, the
# bearer scheme, the body). `EditRoute` answers with services/api/edit.py `answer`, the one
# handler the edit lane calls too, so this is never called. (A docstring would show in OpenAPI.)
async def edit(
    doc_id: UUID, who: Caller, body: Annotated[ContentEdit, parsed_body(ContentEdit)]
) -> EditOut:
    raise AssertionError("answered by services.api.edit.answer")


router.add_api_route(
    "/{doc_id}/content",
    edit,
    methods=["PUT"],
    status_code=202,
    response_model=EditOut,
    responses=responses(404, 409, 413, 422, 429),
    route_class_override=EditRoute,
)


@router.post("/{doc_id}/presence", response_model=PresenceOut, responses=responses(404, 422))
async def join(doc_id: UUID, who: Caller, res: Res) -> PresenceOut:
    return PresenceOut(editors=await res.documents.join(who, str(doc_id)))


@router.delete("/{doc_id}/presence", response_model=PresenceOut, responses=responses(404, 422))
async def leave(doc_id: UUID, who: Caller, res: Res) -> PresenceOut:
    last_out, editors = await res.documents.leave(who, str(doc_id))
    if last_out:
        try:
            await enqueue_flush(res.queue, res.keys, str(doc_id))
        except RedisError as exc:
            # The document stays dirty, so the cron flush still saves it within flush_interval.
            log.warning("could not enqueue flush of %s: %r", doc_id, exc)
    return PresenceOut(editors=editors)


@router.get("/{doc_id}/status", response_model=StatusOut, responses=responses(404, 422))
async def status(doc_id: UUID, who: Caller, res: Res) -> StatusOut:
    return await res.documents.status(who, str(doc_id))


@router.delete("/{doc_id}", status_code=204, responses=responses(404, 422))
async def delete(doc_id: UUID, who: Caller, res: Res) -> Response:
    await res.documents.delete(who, str(doc_id))
    return Response(status_code=204)
