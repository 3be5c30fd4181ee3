"""Every Redis client kind through Redis Sentinel (shared/infra/clients.py, arq's queue), against
real sentinels: a primary, a replica and three sentinels (tests/support/sentinels.py); and the
connections' packer (hiredis's), byte for byte against redis-py's own."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.connections import create_pool
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.typing import EncodableT

from shared.domain.jobs import arq_settings
from shared.infra.clients import (
    HiredisPackingMixin,
    ResetSafeMixin,
    blocking_client,
    cache_client,
    check_client,
    check_connection_pool,
    pubsub_client,
    redis_client,
)
from shared.infra.permissions import can_flushall, service_urls
from shared.settings import Settings, parse_sentinel_url
from tests.support.sentinels import MASTER, Watched, wait_for, watched_valkey


@pytest.fixture(scope="module")
async def watched() -> AsyncIterator[Watched]:
    with tempfile.TemporaryDirectory() as d:
        async with watched_valkey(Path(d)) as w:
            yield w


def test_role_urls_go_through_the_sentinels() -> None:
    s = Settings(
        redis_url="redis://u:p%40ss@ignored:1/3",
        cache_redis_url="rediss://ignored:2/5",
        redis_sentinels="10.0.0.1:26379, 10.0.0.2:26380",
        redis_sentinel_master="prod",
    )
    hosts = "10.0.0.1:26379,10.0.0.2:26380"
    assert s.state_url == f"redis+sentinel://u:p%40ss@{hosts}/3?sentinel_master=prod"
    assert s.queue_url == s.state_url
    assert s.cache_url == f"rediss+sentinel://{hosts}/5?sentinel_master=prod"
    a = parse_sentinel_url(s.state_url)
    assert a.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert (a.master, a.db, a.username, a.password, a.tls) == ("prod", 3, "u", "p@ss", False)
    assert parse_sentinel_url(s.cache_url).tls
    # No role URL at all: db 0, no user.
    bare = Settings(redis_sentinels="127.0.0.1:1")
    assert bare.state_url == "redis+sentinel://127.0.0.1:1/0?sentinel_master=redline"
    # Off by default: the URL as given.
    assert Settings(redis_url="redis://h:1/0").state_url == "redis://h:1/0"


def test_sentinels_refused_with_cluster_or_unix_sockets() -> None:
    with pytest.raises(ValidationError, match="REDLINE_REDIS_CLUSTER"):
        Settings(
            redis_url="redis://h:1/0",
            queue_redis_url="redis://q:1/0",
            redis_cluster=True,
            redis_sentinels="127.0.0.1:1",
        )
    with pytest.raises(ValidationError, match="unix socket"):
        Settings(redis_url="unix:///tmp/redis.sock", redis_sentinels="127.0.0.1:1")
    with pytest.raises(ValidationError, match="not host:port"):
        Settings(redis_sentinels="127.0.0.1")


async def test_every_client_kind_reaches_the_primary(watched: Watched) -> None:
    s = Settings(redis_sentinels=watched.hosts)
    admin = Redis(port=watched.primary.port, decode_responses=True)
    await admin.set("sentinel:probe", "on-primary")
    clients = [
        redis_client(s.state_url),
        redis_client(s.state_url, binary=True),
        blocking_client(s.state_url, block_s=1),
        cache_client(s.cache_url, 0.5),
        check_client(s.queue_url),
        pubsub_client(s),
    ]
    try:
        for client in clients:
            got = await client.get("sentinel:probe")
            assert got in ("on-primary", b"on-primary"), (client, got)
            # Writes: a replica would refuse them (READONLY).
            await client.set("sentinel:write", "ok")
            pool = client.connection_pool
            assert pool.master_address == ("127.0.0.1", watched.primary.port)  # type: ignore[attr-defined]
            assert issubclass(pool.connection_class, ResetSafeMixin)
        sub = clients[-1].pubsub()
        await sub.subscribe("sentinel:chan")
        await admin.publish("sentinel:chan", "hi")
        message = None
        for _ in range(50):
            message = await sub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if message is not None:
                break
        assert message is not None and message["data"] == "hi"
        await sub.aclose()  # type: ignore[no-untyped-call]
    finally:
        for client in clients:
            await client.aclose()
        await admin.aclose()


async def test_check_pool_and_permissions_through_sentinels(watched: Watched) -> None:
    s = Settings(redis_sentinels=watched.hosts)
    assert service_urls(s) == [s.state_url, s.cache_url, s.queue_url]
    pool = check_connection_pool(s.state_url)
    conn = await pool.get_connection()
    try:
        await conn.send_command("PING")
        assert await conn.read_response() == "PONG"
        assert conn.port == watched.primary.port
    finally:
        await pool.release(conn)
        await pool.disconnect()
    # The default user may run anything: the check sees that through the sentinels.
    assert await can_flushall(s.state_url) is True


async def test_arq_queue_through_sentinels(watched: Watched) -> None:
    s = Settings(redis_sentinels=watched.hosts)
    rs = arq_settings(s.queue_url)
    assert rs.sentinel and rs.sentinel_master == MASTER
    assert rs.host == [("127.0.0.1", p.port) for p in watched.sentinels]
    queue = await create_pool(rs)
    try:
        await queue.set("sentinel:arq", "1")
        admin = Redis(port=watched.primary.port, decode_responses=True)
        assert await admin.get("sentinel:arq") == "1"
        await admin.aclose()
    finally:
        await queue.aclose()


async def test_clients_reach_the_new_primary_after_a_failover(tmp_path: Path) -> None:
    async with watched_valkey(tmp_path) as w:
        s = Settings(redis_sentinels=w.hosts)
        client = redis_client(s.state_url)
        queue = await create_pool(arq_settings(s.queue_url))
        try:
            await client.set("before", "1")
            assert await client.wait(1, 5000) == 1  # the replica holds it before the kill
            old = w.primary.port
            w.primary.kill()
            await wait_for("a failover", 30, lambda: w.failed_over(old))
            new = await w.master_port()
            assert new == w.replica.port

            async def writes() -> bool:
                try:
                    await client.set("after", "2")
                    await queue.set("after-arq", "3")
                    return True
                except (RedisConnectionError, RedisTimeoutError):
                    return False  # the first calls may still meet the dead primary

            await wait_for("writes on the new primary", 15, writes)
            reader = Redis(port=new, decode_responses=True)
            assert await reader.mget("before", "after", "after-arq") == ["1", "2", "3"]
            await reader.aclose()
            assert client.connection_pool.master_address == ("127.0.0.1", new)  # type: ignore[attr-defined]
        finally:
            await client.aclose()
            await queue.aclose()


def test_commands_are_packed_by_hiredis_to_the_bytes_redis_py_would_send() -> None:
    """HiredisPackingMixin: the same wire bytes as redis-py's own (Python) packer for every type
    it accepts, a command name with literal arguments split, and the same refusal (DataError)
    for what it refuses."""
    fast, plain = HiredisPackingMixin(), Connection()
    commands: list[tuple[EncodableT, ...]] = [
        ("SET", "k", "é ✓ \u0301", b"\x00\xff" * 5000, 7, -3, 1.5, 0.1, 1e20, memoryview(b"mv")),
        ("CONFIG GET", "maxmemory"),
        (b"CLIENT SETNAME", b"x"),
        ("EVALSHA", "0" * 40, 2, "a", "b"),
    ]
    for args in commands:
        assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))
    assert b"".join(fast.pack_commands(commands)) == b"".join(plain.pack_commands(commands))
    for bad in (True, None, bytearray(b"x"), object()):
        with pytest.raises(DataError):
            fast.pack_command("SET", "k", bad)  # type: ignore[arg-type]
        with pytest.raises(DataError):
            plain.pack_command("SET", "k", bad)  # type: ignore[arg-type]


async def test_every_client_kind_packs_with_hiredis_and_round_trips_values(
    settings: Settings,
) -> None:
    state = redis_client(settings.state_url)
    raw = redis_client(settings.state_url, binary=True)
    cache, check = cache_client(settings.cache_url, 1.0), check_client(settings.state_url)
    try:
        for client in (state, raw, cache, check):
            assert issubclass(client.connection_pool.connection_class, HiredisPackingMixin)
        blob = bytes(range(256)) * 40
        await raw.set("packed:blob", blob)
        await state.hset("packed:h", mapping={"s": "é ✓", "i": 42, "f": 2.5})
        assert await raw.get("packed:blob") == blob
        assert await state.hgetall("packed:h") == {"s": "é ✓", "i": "42", "f": "2.5"}
    finally:
        for client in (state, raw, cache, check):
            await client.aclose()
