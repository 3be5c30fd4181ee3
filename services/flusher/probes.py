"""A small HTTP server for a worker's /healthz, /readyz and /metrics, on the worker's own event
loop (a uvicorn Server in a task; no thread, unlike prometheus_client.start_http_server).

Two things uvicorn would otherwise do are switched off, because the server is a guest in the
worker's process: it must not take over SIGINT/SIGTERM (arq handles them, to drain before exit),
and a port already in use must not `sys.exit` the worker: we bind the socket ourselves, so that is
an OSError the caller decides about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from shared.infra.edge import edge_protocol
from shared.infra.health import Observability, probe_app

log = logging.getLogger("redline.health")


class _GuestServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The host (arq's Worker) owns the process's signals.
        yield


class ProbeServer:
    def __init__(self, obs: Observability, host: str, port: int) -> None:
        self.host = host
        self.port = port
        config = uvicorn.Config(
            probe_app(obs),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            # The same edge as the services: slow or oversized requests are cut.
            http=edge_protocol(obs.probe_limits),
            proxy_headers=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _GuestServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start serving; OSError if the address is taken."""
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        # uvicorn exposes only a flag for "listening"; startup takes a few milliseconds.
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raise what went wrong
        log.info("health and metrics on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, 5)
        except Exception as exc:
            log.warning("probe server did not stop cleanly: %r", exc)
        self._task = None
