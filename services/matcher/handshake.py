"""What is checked before a WebSocket is accepted: the Origin and the bearer token.

A refused handshake has no close code on the wire (RFC 6455 §4.2.2: the server answers the
upgrade request with an HTTP error instead), so we answer with a problem+json HTTP response —
401 for a missing or bad token, 403 for a foreign Origin, 503 for a down dependency — through
the ASGI denial-response extension, and fall back to a close with 1008 (which the server turns
into a 403) where the server does not offer it. Either way nothing is accepted or allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.exceptions import RedisError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket

from shared.accounts import Accounts, Principal
from shared.errors import Unauthenticated

BEARER_SUBPROTOCOL = "bearer"
# A store the matcher needs is away: a 503 before accept, an error frame after.
DOWN = (RedisError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    token: str
    subprotocol: str | None  # to accept with: "bearer" when the token came that way


async def authenticate(
    ws: WebSocket, allowed_origins: tuple[str, ...], accounts: Accounts, what: str
) -> Caller | None:
    """The Origin, then the token: the caller, or None once the handshake has been refused.
    Nothing is accepted here; the socket's own checks (a profile, say) come after."""
    if not origin_allowed(ws.headers.get("origin"), allowed_origins):
        await refuse(ws, 403, f"this Origin may not open {what}")
        return None
    token, subprotocol = bearer(ws)
    if token is None:
        await refuse(ws, 401, "send Authorization: Bearer <token> or the bearer subprotocol")
        return None
    try:
        principal = await accounts.resolve(token)
    except Unauthenticated as exc:
        await refuse(ws, 401, exc.detail)
        return None
    except DOWN:
        await refuse(ws, 503, "the matcher cannot reach its stores; retry shortly")
        return None
    return Caller(principal, token, subprotocol)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """A browser always sends Origin; a client without one is not a browser (no cross-site
    request to forge), so it is let through and its token alone decides."""
    if origin is None:
        return True
    return "*" in allowed or origin.rstrip("/") in allowed


def bearer(ws: WebSocket) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept). Browsers cannot set Authorization on a WebSocket, so they
    send `Sec-WebSocket-Protocol: bearer, <token>`; we then accept the `bearer` subprotocol."""
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), None
    offered = ws.scope.get("subprotocols") or []
    if len(offered) >= 2 and offered[0].lower() == BEARER_SUBPROTOCOL and offered[1]:
        return offered[1], BEARER_SUBPROTOCOL
    return None, None


async def refuse(ws: WebSocket, status: int, detail: str) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        titles = {401: "Unauthorized", 403: "Forbidden", 503: "Service Unavailable"}
        body = {"type": "about:blank", "title": titles.get(status, "Error"), "status": status}
        body["detail"] = detail
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        await ws.send_denial_response(
            JSONResponse(body, status, headers=headers, media_type="application/problem+json")
        )
    else:
        await ws.close(1008 if status != 503 else 1011, detail)
