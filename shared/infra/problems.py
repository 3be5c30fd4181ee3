"""The one builder of RFC 9457 `application/problem+json` answers, for every HTTP surface: the
api's handler table, the matcher's refused handshakes, the health and metrics routes. And the
IETF RateLimit fields, which an allowed request and a 429 both carry."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse

MEDIA_TYPE = "application/problem+json"


def problem(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status}
    body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status, headers=headers, media_type=MEDIA_TYPE)


def rate_limit_headers(
    policy: str, limit: int, window_s: int, remaining: int, reset_s: int
) -> dict[str, str]:
    """draft-ietf-httpapi-ratelimit-headers-10: the policy's quota q per window w seconds, and
    what is left of it now, r units, until t seconds from now."""
    return {
        "RateLimit-Policy": f'"{policy}";q={limit};w={window_s}',
        "RateLimit": f'"{policy}";r={remaining};t={reset_s}',
    }
