"""Structured JSON logs, one object a line, for every service, stamped with the request id.

The request id lives in a contextvar: the API's request middleware sets it per request, the
flusher sets it while it runs a job enqueued by that request, and `RequestIdFilter` copies it onto
every record as it is emitted (a filter, not the formatter: a record may be formatted later, in
another context, e.g. by pytest's caplog).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",
}

request_id: ContextVar[str | None] = ContextVar("redline_request_id", default=None)

# What we accept from a client's X-Request-ID: bounded, and safe to echo in a header or a log line.
_WELL_FORMED = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def new_request_id() -> str:
    return os.urandom(16).hex()


def accept_request_id(raw: bytes | None) -> str:
    """The client's id if it is well-formed, else a fresh one (never an error: ids are advisory)."""
    if raw is not None and _WELL_FORMED.fullmatch(raw):
        return raw.decode("ascii")
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Stamp the current request id on each record (installed on the handler)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            rid = request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


class JsonFormatter(logging.Formatter):
    # One encoder for every line: json.dumps(default=...) would build a new one each call.
    _encoder = json.JSONEncoder(default=str)

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # one tuple: threads swap it atomically

    def _ts(self, created: float, msecs: float) -> str:
        # Lines come many a second (the access log); the formatted second is reused.
        second, stamp = self._second
        if int(created) != second:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(created)))
            self._second = (int(created), stamp)
        return f"{stamp}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._ts(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return self._encoder.encode(out)


def configure_logging(level: str = "INFO", *, access_log: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log is one line a request: too much at keystroke rate.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Ours (shared/infra/observer.py) is one compact line with the route and request id; it can be
    # turned off (REDLINE_ACCESS_LOG=false) where even that is too much.
    if not access_log:
        logging.getLogger("redline.access").setLevel(logging.WARNING)
    # arq logs every cron run (a presence sweep every few seconds); our jobs log what matters.
    logging.getLogger("arq.worker").setLevel(logging.WARNING)
