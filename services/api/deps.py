"""Request dependencies: the resources, the caller, and typed JSON bodies.

Why bodies are dependencies and not FastAPI body parameters: FastAPI reads and decodes a body
before it runs any dependency, so a request without a token and with a malformed body would get
422 instead of 401, and its JSON errors would differ from the edit's (services/api/edit.py). A
`JsonBody` parses with the one parser both use (`json_body`), and a signed-in route's `JsonBody`
depends on the caller, so the order is structural: 401, then 422, then the handler.
`request_bodies` puts each one in the OpenAPI document (services/api/app.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.models import HTTPBearer as HTTPBearerModel
from fastapi.routing import iter_route_contexts
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from services.api.resources import Resources
from shared.domain.accounts import Principal
from shared.domain.errors import Unauthenticated
from shared.infra.bearer import bearer_token

M = TypeVar("M", bound=BaseModel)


# async, though they await nothing: FastAPI runs a plain `def` dependency in its thread pool,
# two thread hand-offs a request on the hot path.
async def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


Res = Annotated[Resources, Depends(resources)]


def bearer(header: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header value, or 401."""
    token = bearer_token(header)
    if token is None:
        raise Unauthenticated("send Authorization: Bearer <token>")
    return token


class BearerToken(SecurityBase):
    """The caller's token (`bearer`); a SecurityBase, so OpenAPI declares the HTTP bearer scheme
    and marks every route that needs it."""

    def __init__(self) -> None:
        self.model = HTTPBearerModel(description="the token from signup or login")
        self.scheme_name = "bearer"

    async def __call__(self, request: Request) -> str:
        return bearer(request.headers.get("authorization", ""))


Token = Annotated[str, Depends(BearerToken())]


async def principal(token: Token, res: Res) -> Principal:
    return await res.accounts.resolve(token)


Caller = Annotated[Principal, Depends(principal)]


async def json_body(request: Request, model: type[M]) -> M:
    """Parse the body (already capped by BodyLimit) into `model`; errors are 422 like FastAPI's."""
    return await received_body(request.receive, model)


async def received_body(receive: Receive, model: type[M]) -> M:
    """`json_body` from the ASGI receive channel itself (the edit lane has no Request)."""
    try:
        return model.model_validate_json(await _read(receive))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


async def _read(receive: Receive) -> bytes:
    """The whole body, as `Request.body()` reads it, without its async generator: on the edit
    path (services/api/edit.py) that generator cost as much as validating the body."""
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


class JsonBody:
    """A request body as `model`, parsed by `json_body`; used as a dependency through one of its
    two kinds, for a public route or a signed-in one."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model


class PublicBody(JsonBody):
    async def __call__(self, request: Request) -> BaseModel:
        return await json_body(request, self.model)


class SignedInBody(JsonBody):
    """It depends on the caller, so a request that is not signed in is refused (401) before
    its body is read, whatever the order of the route's parameters."""

    async def __call__(self, request: Request, _: Caller) -> BaseModel:
        return await json_body(request, self.model)


def parsed_body(model: type[BaseModel], *, signed_in: bool = True) -> Any:
    """`Annotated[Model, parsed_body(Model)]`: the typed body of a route."""
    return Depends(SignedInBody(model) if signed_in else PublicBody(model))


def _bodies(dependant: Dependant) -> Iterator[JsonBody]:
    for sub in dependant.dependencies:
        if isinstance(sub.call, JsonBody):
            yield sub.call
        yield from _bodies(sub)


def request_bodies(app: FastAPI, document: dict[str, Any]) -> dict[str, Any]:
    """Declare each route's JsonBody in `document` (FastAPI's OpenAPI of `app`) as the
    operation's required `application/json` request body; returns the schemas it refers to."""
    schemas: dict[str, Any] = {}
    for route in iter_route_contexts(app.routes):
        dependant = getattr(route, "dependant", None)
        if dependant is None or route.path_format is None:
            continue
        for found in _bodies(dependant):
            name = found.model.__name__
            schema = found.model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[name] = schema
            for method in route.methods or ():
                operation = document["paths"].get(route.path_format, {}).get(method.lower())
                if operation is not None:
                    operation["requestBody"] = {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                        },
                    }
    return schemas
