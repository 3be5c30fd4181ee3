"""The co-editing tests' api: a real uvicorn serving create_app with co-editing on
(tests/support/collab.py), and an HTTP client on it. A test module overrides `collab_settings`
to change a setting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from shared.settings import Settings
from tests.support.collab import api_server


@pytest.fixture
def collab_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"collab_enabled": True})


@pytest.fixture
async def host(collab_settings: Settings) -> AsyncIterator[str]:
    async with api_server(collab_settings) as address:
        yield address


@pytest.fixture
async def http(host: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{host}") as client:
        yield client
