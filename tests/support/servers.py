"""An ASGI app under a real uvicorn in the test's event loop, on a free port: for tests that need
real sockets (WebSockets, the edge protocol), not an in-process transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from deploy.embedded import free_port


@asynccontextmanager
async def served(app: Any, **config: Any) -> AsyncIterator[int]:
    """Serve `app` with uvicorn options `config` (as the service's __main__ sets them); yields
    the port once the server accepts, and stops it at the end."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
            **config,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
