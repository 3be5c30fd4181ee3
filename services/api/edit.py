"""The autosave edit, `PUT /v1/documents/{doc_id}/content`: its whole contract in one function,
`answer`, behind both of its doors.

The edit lane (services/api/editlane.py) calls it for the canonical lowercase id, matched before
the router; the documented route (routes/documents.py, an `EditRoute`) for every other spelling.
Neither resolves FastAPI dependencies for it: FastAPI reads the route's endpoint signature only to
document the endpoint in OpenAPI. Errors are raised, and each door answers them through the one
handler table (services/api/problems.py), so both doors give the same codes, headers and bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from typing import Any
from uuid import UUID

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from services.api.deps import bearer, received_body, resources
from services.api.resources import Resources
from shared.domain.models import ContentEdit

# A document id as `str(UUID)` spells it: what the lane's path takes, and what `answer` edits.
CANONICAL_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL = re.compile(CANONICAL_ID)
_UUID = TypeAdapter(UUID)


async def edited(res: Resources, authorization: str | None, receive: Receive, raw_id: str) -> bytes:
    """The edit of document `raw_id` by the holder of `authorization`: the 202 body
    `{id, version, saved_version, status}`, or an error for the handler table."""
    # In the order FastAPI checks a route's inputs, which every other route keeps: the caller
    # (401), the body (422), then the path (422), then the edit.
    who = await res.accounts.resolve(bearer(authorization))
    edit = await received_body(receive, ContentEdit)
    doc_id = _canonical(raw_id)
    out = await res.documents.edit(who, doc_id, edit.content, edit.base_version)
    # From typed values: no response-model re-validation on the hot path.
    return out.model_dump_json().encode()


# The 202's headers, as Starlette's Response(body, 202, media_type="application/json") sets them.
def accepted_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]


async def answer(request: Request) -> Response:
    """The documented route's door: `edited` for this request."""
    res = await resources(request)
    body = await edited(
        res, request.headers.get("authorization"), request.receive, request.path_params["doc_id"]
    )
    return Response(body, 202, media_type="application/json")


def _canonical(doc_id: str) -> str:
    """The id as a lowercase hyphenated UUID; any spelling FastAPI takes for a `UUID` path
    parameter, refused with FastAPI's own 422 error otherwise."""
    if _CANONICAL.fullmatch(doc_id):  # the lane's ids, at keystroke rate
        return doc_id
    try:
        return str(_UUID.validate_python(doc_id))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**e, "loc": ("path", "doc_id", *e["loc"])} for e in errors]
        ) from None


class EditRoute(APIRoute):
    """The documented route of the edit: FastAPI documents it from its endpoint's signature, as
    any other route, but it answers with `answer`, which owns the contract, instead of resolving
    that signature and calling the endpoint."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return answer
