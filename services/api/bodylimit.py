"""Refuse oversize request bodies without reading them into memory (413)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.domain.errors import TooLarge
from shared.infra.problems import problem


class BodyLimit:
    """A declared Content-Length over the limit is refused before a byte of the body is read;
    a chunked body is counted as it streams and cut off at the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await self._refuse(scope, receive, send)
                    return
                # Declared and within the limit: the server enforces the length itself.
                await self.app(scope, receive, send)
                return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise TooLarge(f"request body is over {self.limit} bytes", limit=self.limit)
            return message

        return counted

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"request body is over {self.limit} bytes",
            {"Connection": "close"},
            limit=self.limit,
        )
        await response(scope, receive, send)
