"""Run the API: `python -m services.api`."""

import uvicorn

from services.api.app import create_app
from shared.infra.edge import EdgeLimits, edge_protocol
from shared.infra.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, access_log=settings.access_log)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        # WebSockets only for co-editing (/v1/collab); per-message compression off: it costs
        # ~30 KB a socket in zlib state, and a Yjs keystroke is 20 bytes. websockets' sans-I/O
        # protocol, what "auto" picks today, named: the legacy "websockets" one cost ~25% more
        # api CPU a keystroke in interleaved runs of the collab bench.
        ws="websockets-sansio" if settings.collab_enabled else "none",
        ws_max_size=settings.collab_max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        http=edge_protocol(EdgeLimits.of(settings, settings.api_max_connections)),
        # Off: X-Forwarded-For is believed only through REDLINE_TRUSTED_PROXIES (ratelimit.py).
        proxy_headers=False,
        # Longer than clients' and load balancers' idle timeouts, so the server is never the one
        # closing a keep-alive connection just as a client reuses it (a spurious ReadError).
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
