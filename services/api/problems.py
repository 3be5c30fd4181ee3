"""Every error the API returns is RFC 9457 `application/problem+json`, mapped here in one table."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from shared import errors

log = logging.getLogger("redline.api")

STATUS: dict[type[errors.RedlineError], int] = {
    errors.NotFound: 404,
    errors.Unauthenticated: 401,
    errors.Forbidden: 403,
    errors.Conflict: 409,
    errors.TooLarge: 413,
    errors.InvalidInput: 422,
    errors.RateLimited: 429,
    errors.Unavailable: 503,
}

# Failures of a dependency, not of the request: 503, and the client may retry; nothing was lost.
DEPENDENCY_ERRORS: tuple[tuple[type[BaseException], str], ...] = (
    (RedisError, "redis"),
    (asyncpg.exceptions.PostgresConnectionError, "postgres"),
    (asyncpg.exceptions.CannotConnectNowError, "postgres"),
    (asyncpg.exceptions.OperatorInterventionError, "postgres"),
    (asyncpg.exceptions.TooManyConnectionsError, "postgres"),
    (asyncpg.InterfaceError, "postgres"),
    (ConnectionError, "a dependency"),
    (OSError, "a dependency"),
    (TimeoutError, "a dependency"),
)


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status, headers=headers, media_type="application/problem+json")


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.RedlineError)
    status = next(code for cls, code in STATUS.items() if isinstance(exc, cls))
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, errors.Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, errors.Conflict) and exc.current_version is not None:
        extra["current_version"] = exc.current_version
    elif isinstance(exc, errors.TooLarge):
        extra["limit"] = exc.limit
    elif isinstance(exc, errors.RateLimited):
        headers["Retry-After"] = str(exc.retry_after_s)
        # draft-ietf-httpapi-ratelimit-headers-10: the policy's quota q per window w seconds,
        # and what is left of it now, r units, until t seconds from now.
        headers["RateLimit-Policy"] = f'"{exc.policy}";q={exc.limit};w={exc.window_s}'
        headers["RateLimit"] = f'"{exc.policy}";r=0;t={exc.retry_after_s}'
    elif isinstance(exc, errors.Unavailable):
        headers["Retry-After"] = "1"
    return problem(status, exc.detail, headers, **extra)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return problem(422, "the request is not valid", errors=issues)


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    return problem(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _dependency(request: Request, exc: Exception) -> JSONResponse:
    dependency = next(name for cls, name in DEPENDENCY_ERRORS if isinstance(exc, cls))
    log.warning(
        "%s unavailable during %s %s: %r", dependency, request.method, request.url.path, exc
    )
    return problem(503, f"{dependency} is unavailable; retry shortly", {"Retry-After": "1"})


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    # The client went away mid-body: nothing was applied, and nobody is left to answer.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return problem(400, "client disconnected")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette runs this outside every middleware, so the request id comes from the scope
    # (shared/observer.py puts it there), not from the contextvar.
    rid = request.scope.get("request_id")
    log.exception(
        "unhandled error in %s %s",
        request.method,
        request.url.path,
        extra={"request_id": rid} if rid else None,
    )
    return problem(500, "internal error", {"X-Request-ID": rid} if rid else None)


Handler = Callable[[Request, Exception], Awaitable[JSONResponse]]


def handlers() -> dict[type[Exception], Handler]:
    table: dict[type[Exception], Handler] = {
        errors.RedlineError: _domain,
        RequestValidationError: _validation,
        HTTPException: _http,
    }
    # Registered class by class so Starlette answers them in its exception middleware, as it
    # does for the domain errors, instead of treating them as crashes.
    for cls, _ in DEPENDENCY_ERRORS:
        table[cast(type[Exception], cls)] = _dependency
    table[ClientDisconnect] = _disconnected
    table[Exception] = _unexpected
    return table


HANDLERS = handlers()


async def answer(request: Request, exc: Exception) -> JSONResponse:
    """The answer the app gives `exc`, for ASGI code in front of the router (services/api/
    editlane.py); like Starlette, the handler of the nearest class in the exception's MRO."""
    handler = next(HANDLERS[c] for c in type(exc).__mro__ if c in HANDLERS)
    return await handler(request, exc)


def install(app: FastAPI) -> None:
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
