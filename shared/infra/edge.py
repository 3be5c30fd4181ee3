"""The HTTP edge every Redline listener runs (api, matcher, the flusher's probe port): uvicorn's
httptools protocol plus the limits it lacks against slow or oversized requests.

uvicorn alone holds a client that trickles its request forever: its keep-alive timer is reset by
every byte and is not armed at all before the first request, and `h11_max_incomplete_event_size`
only exists for the (slower) h11 protocol, while httptools accepts an 8 MB header. This subclass
adds, per connection:

- a header deadline: the request line and headers must arrive within `header_timeout_s` of the
  connection opening (or of the request's first byte on a kept-alive connection), else 408 and
  close; an idle kept-alive connection is still governed by uvicorn's keep-alive timeout;
- a body deadline: the whole body must arrive within `body_timeout_s` of the headers, else 408
  (if no answer was started) and close; the app's pending `receive()` gets `http.disconnect`;
- a header cap: a request line plus headers over `max_header_bytes` is answered 431 and closed
  (bytes are counted as they arrive, so memory stays bounded by the cap plus one socket read);
- a connection cap: a request (or a WebSocket handshake, which uvicorn's own
  `limit_concurrency` does not see) arriving while more than `max_connections` connections are
  open on this process is answered 503 with Retry-After and closed, freeing the slot at once.

Why stay on uvicorn rather than switch servers: uvicorn with httptools is the fastest of the
three on this edit path and carries the `websocket.http.response` denial extension the matcher's
handshake relies on; hypercorn has `read_timeout` and `h11_max_incomplete_size` but is h11-only
(slower) and has no header deadline separate from idle reads; granian has http1 header read
timeouts and buffer caps, but gained the denial extension only recently and would be a new
compiled dependency and a new process model for every service. The limits above are ~100 lines.

Every refusal is problem+json (the same shape as services/api/problems.py, written raw here
because no app is involved yet) and logged at WARNING with the peer address.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import Settings

log = logging.getLogger("redline.edge")


@dataclass(frozen=True)
class EdgeLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_header_bytes: int
    max_connections: int

    @classmethod
    def of(cls, settings: Settings, max_connections: int) -> EdgeLimits:
        return cls(
            settings.http_header_timeout_s,
            settings.http_body_timeout_s,
            settings.http_max_header_bytes,
            max_connections,
        )


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that was already answered."""


def problem_bytes(status: int, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 problem+json response that closes the connection."""
    phrase = HTTPStatus(status).phrase
    body = json.dumps(
        {"type": "about:blank", "title": phrase, "status": status, "detail": detail}
    ).encode()
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class EdgeProtocol(HttpToolsProtocol):
    limits: ClassVar[EdgeLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # reading a request line and headers
        self._head_bytes = 0

    # Deadlines --------------------------------------------------------------------------
    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if not self._in_head else None
        if cycle is None or not cycle.response_started:
            self._refuse(408, f"request {what} not received in time")
        else:
            self.transport.close()
        if cycle is not None:
            # The app may be waiting in receive(): it now gets http.disconnect, and whatever it
            # answers is dropped (uvicorn ignores sends on a disconnected cycle).
            cycle.disconnected = True
            cycle.message_event.set()

    def _refuse(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
        log.warning("edge: %d to %s: %s", status, peer, detail)
        self.transport.write(problem_bytes(status, detail, headers))
        self.transport.close()

    # Protocol interface ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn arms no timer before the first request: a silent connection would stay forever.
        self._arm(self.limits.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, except that a refusal from a callback stays refused (its
        # handler would write a 400 after our answer) and head bytes are counted as they come.
        self._unset_keepalive_if_required()
        counted = self._in_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
            return
        if self._in_head and counted:
            # A request whose first byte came in this read is not counted until the next one:
            # at most one socket read (256 KiB) over the cap is ever buffered.
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_bytes:
                self._disarm()
                self._refuse(431, f"request headers are over {self.limits.max_header_bytes} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # a kept-alive connection's next request
            self._in_head = True
            self._head_bytes = 0
            self._arm(self.limits.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.limits.max_header_bytes:
            self._refuse(431, f"request headers are over {self.limits.max_header_bytes} bytes")
            raise _Refused
        if self.parser.should_upgrade() and self._should_upgrade():
            super().on_headers_complete()  # the handshake is checked in handle_websocket_upgrade
            return
        if self._over_capacity():
            raise _Refused
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.more_body:
            self._arm(self.limits.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        if not self._in_head:
            self._disarm()
        super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        if self._over_capacity():
            return
        super().handle_websocket_upgrade()

    def _over_capacity(self) -> bool:
        # This connection is in the set, so more than the cap means the cap is already in use.
        if len(self.connections) <= self.limits.max_connections:
            return False
        self._refuse(
            503,
            f"this process is at its {self.limits.max_connections} connection limit",
            {"retry-after": "1"},
        )
        return True


def edge_protocol(limits: EdgeLimits) -> type[EdgeProtocol]:
    """The protocol class to pass as uvicorn's `http=`, bound to these limits. Pass
    `proxy_headers=False` too: the client address comes from Redline's trusted-proxy rule alone
    (services/api/ratelimit.py), never from uvicorn's (which trusts 127.0.0.1 by default)."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"limits": limits})
