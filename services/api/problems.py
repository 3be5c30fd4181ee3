"""Every error the API returns is RFC 9457 `application/problem+json`, mapped here in one table,
and declared here for OpenAPI (`responses`, `schemas`), so the document says what the API does."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from shared.domain import errors
from shared.domain.models import Problem, ValidationProblem
from shared.infra.dependencies import DOWN, detail, reason, retry_after_s, which
from shared.infra.metrics import DependencyMetrics
from shared.infra.problems import MEDIA_TYPE, problem, rate_limit_headers

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
        headers |= rate_limit_headers(exc.policy, exc.limit, exc.window_s, 0, exc.retry_after_s)
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


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names the methods of the first route whose path matched; a resource served
        # by several routes (GET and POST /v1/documents) allows all of theirs (RFC 9110 15.5.6).
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem(exc.status_code, str(exc.detail), headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path) and route.methods:
            methods |= route.methods
    return sorted(methods)


async def _dependency(request: Request, exc: Exception) -> JSONResponse:
    # A failure of a dependency, not of the request: 503, and the client may retry; nothing
    # was applied, so nothing was lost.
    metrics: DependencyMetrics | None = getattr(request.app.state, "dependency_metrics", None)
    if metrics is not None:
        metrics.failed(exc)
    log.warning(
        "%s %s during %s %s: %r",
        which(exc),
        "full" if reason(exc) == "full" else "unavailable",
        request.method,
        request.url.path,
        exc,
    )
    return problem(503, detail(exc), {"Retry-After": str(retry_after_s(exc))})


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    # The client went away mid-body: nothing was applied, and nobody is left to answer.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return problem(400, "client disconnected")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette runs this outside every middleware, so the request id comes from the scope
    # (shared/infra/observer.py puts it there), not from the contextvar.
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
    for cls in DOWN:
        table[cls] = _dependency
    table[ClientDisconnect] = _disconnected
    table[Exception] = _unexpected
    return table


HANDLERS = handlers()


async def answer(request: Request, exc: Exception) -> JSONResponse:
    """The answer the app gives `exc`, for ASGI code in front of the router (services/api/
    editlane.py); like Starlette, the handler of the nearest class in the exception's MRO."""
    handler = next(HANDLERS[c] for c in type(exc).__mro__ if c in HANDLERS)
    return await handler(request, exc)


# OpenAPI -------------------------------------------------------------------------------------
_HEADER = {"schema": {"type": "string"}, "required": True}
_RATE_LIMIT = {
    "Retry-After": {**_HEADER, "description": "seconds until a request may succeed"},
    "RateLimit-Policy": {**_HEADER, "description": "the policy: quota q per window w seconds"},
    "RateLimit": {**_HEADER, "description": "what is left (r) and when it is back (t seconds)"},
}
_WHY: dict[int, tuple[str, dict[str, Any]]] = {
    401: (
        "No valid session: send `Authorization: Bearer <token>`",
        {"WWW-Authenticate": {**_HEADER, "description": "Bearer"}},
    ),
    403: ("Signed in, but not allowed to do this", {}),
    404: ("Not found, or not yours (the same answer: existence is not leaked)", {}),
    409: ("Conflict with the current state (a stale edit names `current_version`)", {}),
    413: ("The request body is over the limit (named in `limit`)", {}),
    422: ("The request is not valid (`errors` says where and why)", {}),
    429: ("Rate limited: retry after `Retry-After` seconds", _RATE_LIMIT),
    503: (
        "A dependency is down; nothing was lost, retry shortly",
        {"Retry-After": {**_HEADER, "description": "seconds"}},
    ),
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI response objects for these error statuses of a route: problem+json bodies (the
    422 one with its `errors` list), and the headers each always carries."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _WHY[status]
        model = ValidationProblem if status == 422 else Problem
        schema = {"$ref": f"#/components/schemas/{model.__name__}"}
        out[status] = {"description": description, "content": {MEDIA_TYPE: {"schema": schema}}}
        if headers:
            out[status]["headers"] = headers
    return out


def schemas() -> dict[str, Any]:
    """The component schemas `responses` refers to."""
    _, top = models_json_schema(
        [(Problem, "serialization"), (ValidationProblem, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    found: dict[str, Any] = top["$defs"]
    return found


def install(app: FastAPI, metrics: DependencyMetrics | None = None) -> None:
    """The handler table on `app`; each 503 for a dependency counted in `metrics`."""
    app.state.dependency_metrics = metrics
    for cls, handler in HANDLERS.items():
        app.add_exception_handler(cls, handler)
