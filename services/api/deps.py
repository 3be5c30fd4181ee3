"""Request dependencies: the resources, the caller, and bounded JSON bodies."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from services.api.resources import Resources
from shared.accounts import Principal
from shared.errors import Unauthenticated

M = TypeVar("M", bound=BaseModel)


# async, though they await nothing: FastAPI runs a plain `def` dependency in its thread pool,
# two thread hand-offs a request on the hot path.
async def resources(request: Request) -> Resources:
    res: Resources = request.app.state.resources
    return res


Res = Annotated[Resources, Depends(resources)]


def bearer(header: str) -> str:
    """The token of an `Authorization: Bearer <token>` header value."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send Authorization: Bearer <token>")
    return token.strip()


async def bearer_token(request: Request) -> str:
    return bearer(request.headers.get("authorization", ""))


Token = Annotated[str, Depends(bearer_token)]


async def principal(token: Token, res: Res) -> Principal:
    return await res.accounts.resolve(token)


Caller = Annotated[Principal, Depends(principal)]


async def json_body(request: Request, model: type[M]) -> M:
    """Parse the body (already capped by BodyLimit) into `model`; errors are 422 like FastAPI's."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
