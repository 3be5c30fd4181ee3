"""Per-request observation for the HTTP services, as one pure ASGI middleware (no extra task, no
Request object): request id, request metrics, access log.

- Request id: the client's `X-Request-ID` if well-formed (shared/infra/logs.py), else a new one;
  echoed in the response header and set in the contextvar every log record is stamped from, and that
  `shared/domain/jobs.py` copies into the jobs a request enqueues.
- Metrics: count and latency per method, route template (`/v1/documents/{doc_id}`, never the
  raw path; `unmatched` when answered before routing: a 404, BodyLimit's 413) and status
  (shared/infra/metrics.py).
- Access log: one INFO line per request on the `redline.access` logger, except successful answers
  on `quiet_routes` (the autosave edit: at keystroke rate its lines would be most of the log and
  about a fifth of the edit's CPU; /metrics counts them, and their errors are still logged).

It sits on the edit path, so it does the least it can: one scan of the header list, two clock
reads, two metric updates through cached children, and the log line only if INFO is enabled.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.infra.logs import accept_request_id, request_id
from shared.infra.metrics import HttpMetrics

access = logging.getLogger("redline.access")

HEADER = b"x-request-id"
UNMATCHED = "unmatched"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class RequestObserver:
    def __init__(
        self, app: ASGIApp, metrics: HttpMetrics, quiet_routes: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.quiet_routes = quiet_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            # No response header to echo it in, but the socket's logs carry one id.
            token = request_id.set(accept_request_id(_header(scope, HEADER)))
            try:
                await self.app(scope, receive, send)
            finally:
                request_id.reset(token)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        rid = accept_request_id(_header(scope, HEADER))
        echo = (HEADER, rid.encode("ascii"))
        status = 500  # if the app raises before answering, the server answers 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        token = request_id.set(rid)
        # For the server-error handler, which runs outside this middleware, after the reset.
        scope["request_id"] = rid
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path_format", None) or UNMATCHED
            method = scope["method"]
            self.metrics.observe(method, route, status, seconds)
            quiet = status < 400 and route in self.quiet_routes
            if not quiet and access.isEnabledFor(logging.INFO):
                _access_line(method, route, scope["path"], status, seconds, rid)
            request_id.reset(token)


def _access_line(method: str, route: str, path: str, status: int, seconds: float, rid: str) -> None:
    # makeRecord + handle is Logger.info minus its stack walk for the caller's file and line,
    # which the JSON line does not print: a few microseconds a request.
    ms = round(seconds * 1000, 3)
    fields = {
        "method": method,
        "route": route,
        "path": path,
        "status": status,
        "duration_ms": ms,
        "request_id": rid,
    }
    record = access.makeRecord(
        access.name, logging.INFO, __file__, 0, "%s %s %d %.2fms",
        (method, route, status, ms), None, extra=fields,
    )  # fmt: skip
    access.handle(record)
