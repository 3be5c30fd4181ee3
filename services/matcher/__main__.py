"""Run the matcher: `python -m services.matcher`."""

import logging

import uvicorn

from services.matcher.app import create_app
from shared.infra.edge import EdgeLimits, edge_protocol
from shared.infra.logs import configure_logging
from shared.settings import Settings


class _QuietHandshakes(logging.Filter):
    """uvicorn logs one INFO line per accepted WebSocket (too much at 10,000 sockets), and its
    sans-I/O protocol logs an ERROR after every denial response (a refused token or Origin),
    which is our normal answer to a bad handshake, not a failure."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "[accepted]" not in text and "returned without completing handshake" not in text


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    logging.getLogger("uvicorn.error").addFilter(_QuietHandshakes())
    uvicorn.run(
        create_app(settings),
        host=settings.matcher_host,
        port=settings.matcher_port,
        log_config=None,
        access_log=False,
        # Slow or oversized handshakes are cut, and sockets per process capped (503).
        http=edge_protocol(EdgeLimits.of(settings, settings.matcher_max_connections)),
        # Off: a forwarded address is believed only through REDLINE_TRUSTED_PROXIES.
        proxy_headers=False,
        # Per-message compression costs ~30 KB a socket in zlib state for small JSON frames.
        ws_per_message_deflate=False,
        ws_max_size=settings.ws_max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        # Enough for a burst of connects; the kernel caps it at net.core.somaxconn.
        backlog=4096,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
