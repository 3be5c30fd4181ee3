"""The embedded Valkey's allocator: the machine's jemalloc when it has one, else libc malloc."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from deploy.embedded import Valkey, free_port, jemalloc


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("use_jemalloc", [True, False])
def test_valkey_allocator(tmp_path: Path, use_jemalloc: bool) -> None:
    server = Valkey(tmp_path / "valkey", free_port(), aof=False, use_jemalloc=use_jemalloc)
    server.start()
    try:
        assert server.proc is not None
        client = redis.Redis.from_url(server.url)
        # It serves as usual (a write that allocates, read back).
        client.set("k", "x" * 100_000)
        assert client.strlen("k") == 100_000
        client.close()
        preloaded = use_jemalloc and jemalloc() is not None
        assert ("libjemalloc" in _mapped(server.proc.pid)) is preloaded
        assert server.allocator == (jemalloc() if preloaded else "libc malloc")
    finally:
        server.stop()
