"""An api instance in-process (its own lifespan, clients and counters), for tests that need the
app object (its resources) or several instances at once, as if several api processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.api.app import create_app
from services.api.resources import Resources
from shared.settings import Settings


@asynccontextmanager
async def api_app(
    settings: Settings, client: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield app, http


def resources(app: FastAPI) -> Resources:
    res: Resources = app.state.resources
    return res
