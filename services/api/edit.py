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

from services.api.deps import bearer, json_body, resources
from shared.domain.models import ContentEdit

# A document id as `str(UUID)` spells it: what the lane's path takes, and what `answer` edits.
CANONICAL_ID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL = re.compile(CANONICAL_ID)
_UUID = TypeAdapter(UUID)


async def answer(request: Request) -> Response:
    """The edit of the document `doc_id` (a path parameter) by the request's caller: 202
    `{id, version, saved_version, status}`, or an error for the handler table."""
    res = await resources(request)
    # In the order FastAPI checks a route's inputs, which every other route keeps: the caller
    # (401), the body (422), then the path (422), then the edit.
    who = await res.accounts.resolve(bearer(request.headers.get("authorization")))
    edit = await json_body(request, ContentEdit)
    doc_id = _canonical(request.path_params["doc_id"])
    out = await res.documents.edit(who, doc_id, edit.content, edit.base_version)
    # From typed values: no response-model re-validation on the hot path.
    return Response(out.model_dump_json(), 202, media_type="application/json")


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
