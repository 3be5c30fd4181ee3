"""What is checked before a WebSocket is accepted, on every socket Redline serves (the matcher's
match and events sockets, the api's collab socket): the Origin and the bearer token.

A refused handshake has no close code on the wire (RFC 6455 §4.2.2: the server answers the
upgrade request with an HTTP error instead), so we answer with a problem+json HTTP response —
401 for a missing or bad token, 403 for a foreign Origin, 404 for a document the caller may not
open, 429 (with Retry-After) at a cap, 503 for a down dependency — through the ASGI
denial-response extension, and fall back to a close with 1008 (1013 for 429 and 503: try again
later; the server turns either into a 403) where the server does not offer it. Either way nothing
is accepted or allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.websockets import WebSocket

from shared.domain.accounts import Accounts, Principal
from shared.domain.errors import Unauthenticated
from shared.infra.bearer import bearer_token
from shared.infra.dependencies import DOWN, detail, retry_after_s
from shared.infra.problems import problem

BEARER_SUBPROTOCOL = "bearer"


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    token: str
    # To accept with: the client's own spelling of "bearer" when the token came that way.
    subprotocol: str | None


async def authenticate(
    ws: WebSocket, allowed_origins: tuple[str, ...], accounts: Accounts, what: str
) -> Caller | None:
    """The Origin, then the token: the caller, or None once the handshake has been refused.
    Nothing is accepted here; the socket's own checks (a profile, a document) come after."""
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
    except DOWN as exc:
        await refuse_unavailable(ws, exc)
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
    send `Sec-WebSocket-Protocol: bearer, <token>`; we then accept the `bearer` subprotocol,
    spelled exactly as offered (RFC 6455 §4.1: a client fails a connection whose selected
    subprotocol is not one it offered, and token comparison there is case-sensitive)."""
    token = bearer_token(ws.headers.get("authorization"))
    if token is not None:
        return token, None
    offered = ws.scope.get("subprotocols") or []
    if len(offered) >= 2 and offered[0].lower() == BEARER_SUBPROTOCOL and offered[1]:
        return offered[1], offered[0]
    return None, None


async def refuse_unavailable(ws: WebSocket, exc: BaseException) -> None:
    """Refuse a handshake because a dependency is down (`exc`, one of DOWN): 503 with what is
    wrong and Retry-After, as an HTTP request would get (a full Redis is not "unreachable")."""
    await refuse(ws, 503, detail(exc), {"Retry-After": str(retry_after_s(exc))})


async def refuse(
    ws: WebSocket, status: int, why: str, headers: dict[str, str] | None = None
) -> None:
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        headers = dict(headers or {})
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        await ws.send_denial_response(problem(status, why, headers))
    else:
        await ws.close(1013 if status in (429, 503) else 1008, why)
