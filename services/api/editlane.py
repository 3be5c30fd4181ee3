"""The autosave edit's fast door: `PUT /v1/documents/{id}/content`, matched in front of FastAPI's
router.

It is the one route clients call at keystroke rate, and FastAPI's per-request machinery (matching
the path against every route, resolving the dependency tree, wrapping the response) cost more CPU
than the edit itself. This lane keeps only what makes it fast: it matches the canonical path with
one regex before the router, then calls the edit's one handler (services/api/edit.py `answer`)
and answers its errors through the one handler table (`problems.answer`), exactly as the
documented route does.

Everything else passes through to the app untouched, including an id that is not a canonical
lowercase UUID: the documented route (routes/documents.py) serves those, normalizing or refusing
them.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api import problems
from services.api.edit import CANONICAL_ID, EditRoute, accepted_headers, edited

PATH = re.compile(f"/v1/documents/({CANONICAL_ID})/content")


class EditLane:
    """ASGI middleware: sits inside BodyLimit (so a body is capped the same way) and outside the
    router. `api` is the FastAPI app: the resources its lifespan puts on its state, and its
    documented edit route."""

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self._api = api
        # The route the router would have matched: request metrics and access logs read its
        # template from scope["route"] (shared/infra/observer.py).
        self._route = next(
            c.original_route
            for c in iter_route_contexts(api.routes)
            if isinstance(c.original_route, EditRoute)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] == "http" and scope["method"] == "PUT":
            match = PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route
        scope["path_params"] = {"doc_id": match.group(1)}
        authorization = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"), None
        )
        try:
            body = await edited(self._api.state.resources, authorization, receive, match.group(1))
        except Exception as exc:  # answered exactly as the router's exception handlers would
            response = await problems.answer(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        # The bytes the documented route's Response sends, without building one: this is the
        # keystroke path.
        await send(
            {"type": "http.response.start", "status": 202, "headers": accepted_headers(body)}
        )
        await send({"type": "http.response.body", "body": body})
