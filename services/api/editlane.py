"""The autosave edit, `PUT /v1/documents/{id}/content`, answered in front of FastAPI's router.

It is the one route clients call at keystroke rate, and FastAPI's per-request machinery (matching
the path against every route, resolving the dependency tree, wrapping the response) cost more CPU
than the edit itself. This thin ASGI layer answers the same requests with the same code
(`Accounts.resolve`, `Documents.edit`), the same errors (`problems.answer`) and the same bytes.

Everything else passes through to the app untouched, including an id that is not a canonical
lowercase UUID: the regular route in routes/documents.py serves those (normalizing or refusing
them) and documents the endpoint in OpenAPI.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import problems
from services.api.deps import bearer
from services.api.resources import Resources
from shared.domain.models import ContentEdit

PATH = re.compile(
    r"/v1/documents/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/content"
)
JSON = (b"content-type", b"application/json")


class _Route:
    """What request metrics and access logs read of a matched route: its template, so this
    answer is counted as /v1/documents/{doc_id}/content exactly as if the router had matched."""

    path_format = "/v1/documents/{doc_id}/content"


ROUTE = _Route()


class EditLane:
    """ASGI middleware: sits inside BodyLimit (so a body is capped the same way) and outside the
    router. `api` is the FastAPI app, whose lifespan puts the resources on its state."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self._api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "PUT":
            match = PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = ROUTE
        try:
            body = await self._edit(scope, receive, match.group(1))
        except Exception as exc:  # answered exactly as the router's exception handlers would
            response = await problems.answer(Request(scope), exc)
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [(b"content-length", str(len(body)).encode()), JSON],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _edit(self, scope: Scope, receive: Receive, doc_id: str) -> bytes:
        res: Resources = self._api.state.resources
        # As the route does: the caller first (401), then the body (422), then the edit.
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        who = await res.accounts.resolve(bearer(header.decode("latin-1")))
        try:
            edit = ContentEdit.model_validate_json(await _body(receive))
        except ValidationError as exc:
            raise RequestValidationError(exc.errors(include_url=False)) from None
        out = await res.documents.edit(who, doc_id, edit.content, edit.base_version)
        # The id matched PATH (hex and hyphens): nothing in this reply needs JSON escaping.
        return (
            f'{{"id":"{out.id}","version":{out.version},'
            f'"saved_version":{out.saved_version},"status":"{out.status}"}}'
        ).encode()


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if not chunks:
                return chunk
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)
