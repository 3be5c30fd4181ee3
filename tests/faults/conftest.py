from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deploy.embedded import Valkey
from tests.support.faults import state_valkey


@pytest.fixture
async def valkey(tmp_path: Path) -> AsyncIterator[Valkey]:
    """A state Valkey of the test's own, with AOF (the session's is shared), killed at the end."""
    async with state_valkey(tmp_path / "valkey", aof=True) as valkey:
        yield valkey
