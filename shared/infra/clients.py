"""Redis clients and the asyncpg pool, as each service's lifespan opens them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncpg
import hiredis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError
from redis.typing import EncodableT

from shared.settings import Settings, is_sentinel_url, parse_sentinel_url


class ResetSafeMixin(Connection):
    """Makes a redis-py connection's writes on a connection the server reset fail as a redis
    ConnectionError, as they do under asyncio's own loop. Under uvloop (uvicorn's loop for the api
    and the matcher) the write raises `RuntimeError: unable to perform operation on
    <TCPTransport closed=True>; the handler is closed` (MagicStack/uvloop#506), which redis-py
    re-raises as is: the api answered 500 and a reader loop catching RedisError would die.
    Mixed into the plain, TLS and Sentinel-managed connection classes alike."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:  # redis-py has already disconnected this connection
            raise RedisConnectionError(f"Error writing to socket: {exc}") from exc


class HiredisPackingMixin(Connection):
    """Packs commands with hiredis's C packer (hiredis is already the reply parser), as redis-py's
    sync client does when hiredis is installed; its asyncio client (5.x) packs in Python, about
    5x slower: a flush batch's scripts carry a state and a text a document, and packing them was
    a fifth of the flusher's CPU. The same bytes for every type redis-py accepts (bytes, str as
    UTF-8, int, float); anything else is refused as redis-py refuses it, with a DataError."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        # A command name may carry literal arguments ("CONFIG GET"): Redis wants them apart.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif isinstance(args[0], bytes) and b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:  # hiredis refuses what redis-py's encoder refuses (bool, None, bytearray, ...)
            return [hiredis.pack_command(cast(tuple[str | int | float | bytes | memoryview], args))]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


class ResetSafeConnection(HiredisPackingMixin, ResetSafeMixin):
    pass


class ResetSafeSSLConnection(HiredisPackingMixin, ResetSafeMixin, SSLConnection):
    pass


class ResetSafeSentinelConnection(HiredisPackingMixin, ResetSafeMixin, SentinelManagedConnection):
    pass


class ResetSafeSentinelSSLConnection(
    HiredisPackingMixin, ResetSafeMixin, SentinelManagedSSLConnection
):
    pass


def reset_safe(url: str) -> dict[str, Any]:
    """The `connection_class` option for `Redis.from_url(url, ...)` (TCP and TLS URLs; a unix
    socket keeps redis-py's own class)."""
    if url.startswith("rediss://"):
        return {"connection_class": ResetSafeSSLConnection}
    if url.startswith("redis://"):
        return {"connection_class": ResetSafeConnection}
    return {}


class _SentinelPool(SentinelConnectionPool):
    """A pool on the sentinels' current primary that also closes its own sentinel clients when
    it is closed (redis-py's Sentinel never closes them)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # a full close, not a switch to a new primary
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()


def _pool(url: str, options: dict[str, Any]) -> ConnectionPool:
    """A pool of its own for one client (each client kind keeps its own options). A sentinel
    URL asks the sentinels for the primary at each (re)connect; redis-py's Sentinel-managed
    connection drops a primary that was demoted (READONLY) and asks again."""
    if not is_sentinel_url(url):
        return ConnectionPool.from_url(url, **options, **reset_safe(url))
    address = parse_sentinel_url(url)
    # The sentinels answer quickly or not at all: the connect timeout bounds every question.
    connect = options.get("socket_connect_timeout", 2)
    # redis-py's Sentinel classes are untyped.
    manager = Sentinel(  # type: ignore[no-untyped-call]
        address.sentinels,
        sentinel_kwargs={"socket_connect_timeout": connect, "socket_timeout": connect},
    )
    cls = ResetSafeSentinelSSLConnection if address.tls else ResetSafeSentinelConnection
    return _SentinelPool(  # type: ignore[no-untyped-call]
        address.master,
        manager,
        connection_class=cls,
        db=address.db,
        username=address.username,
        password=address.password,
        **options,
    )


def _client(url: str, options: dict[str, Any]) -> Redis:
    client: Redis = Redis.from_pool(_pool(url, options))
    return client


class _Cluster(RedisCluster):
    """redis-py's asyncio RedisCluster has no publish() (nor pubsub(): see pubsub_client)."""

    async def publish(self, channel: str, message: str) -> int:
        # Classic PUBLISH is propagated over the cluster bus to every node's subscribers, so one
        # node will do: the client's default node (a primary from the slot map, replaced if it
        # fails; resolved after the client initializes). The reply counts that node's only.
        flag = RedisCluster.DEFAULT_NODE
        return int(await self.execute_command("PUBLISH", channel, message, target_nodes=flag))


def redis_client(url: str, *, cluster: bool = False, binary: bool = False) -> Redis:
    """A client for one role. With `cluster`, a Redis Cluster client that finds every node from
    the one in `url`; every Lua script and multi-key call shares a hash tag, so each runs on one
    node (shared/store/keys.py). Typed as Redis: the two classes share the command API we use.
    With `binary`, replies stay bytes (Yjs updates are not text: shared/store/update_log.py)."""
    # Short timeouts: a dead Redis must turn into a quick 503, never a hung request.
    options: dict[str, Any] = dict(
        decode_responses=not binary,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        health_check_interval=30,
    )
    if cluster:
        return cast(Redis, _Cluster.from_url(url, **options))
    return _client(url, options)


def blocking_client(url: str, *, cluster: bool = False, block_s: float) -> Redis:
    """A client for a reader that blocks (XREAD BLOCK): it holds a connection while it waits, so
    its read timeout is the block plus a margin, and a timeout is not retried (the reader's own
    loop retries)."""
    options: dict[str, Any] = dict(
        decode_responses=True, socket_connect_timeout=2, socket_timeout=block_s + 10
    )
    if cluster:
        return cast(Redis, RedisCluster.from_url(url, **options))
    return _client(url, options)


def pubsub_client(settings: Settings, *, binary: bool = False) -> Redis:
    """A plain client for the state role's pub/sub, also in cluster mode: redis-py's asyncio
    RedisCluster has no pubsub(). Classic SUBSCRIBE/PUBLISH is broadcast over the whole cluster,
    so one connection to the node in the URL hears what any node publishes (PUBLISH itself may go
    through the cluster client). No read timeout: a subscriber is idle most of the time. With
    `binary`, messages stay bytes (Yjs updates)."""
    options: dict[str, Any] = dict(
        decode_responses=not binary, socket_connect_timeout=2, health_check_interval=15
    )
    return _client(settings.state_url, options)


def cache_client(url: str, timeout_s: float) -> Redis:
    """The cache role's client: the cache is optional, so a slow or unreachable server must cost
    a read `timeout_s` at most, then the read goes to Postgres (no retries here)."""
    options: dict[str, Any] = dict(
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=timeout_s,
        retry_on_timeout=False,
        health_check_interval=30,
    )
    return _client(url, options)


def check_client(url: str, *, timeout_s: float = 5) -> Redis:
    """A short-lived client for one check (a Redis user's permissions at start-up, a wait for a
    dependency): 2 s to connect, `timeout_s` for a reply, no retries; the caller closes it."""
    return _client(url, _check_options(timeout_s))


def check_connection_pool(url: str) -> ConnectionPool:
    """A connection pool with `check_client`'s options, for a check that speaks to one raw
    connection (shared/infra/permissions.py's MULTI ... DISCARD); the caller disconnects it."""
    return _pool(url, _check_options(5))


def _check_options(timeout_s: float) -> dict[str, Any]:
    return dict(decode_responses=True, socket_connect_timeout=2, socket_timeout=timeout_s)


async def _no_reset(_conn: asyncpg.Connection) -> None:
    # asyncpg's default reset runs a query on every release. Our code never leaves session state
    # behind (transactions are always context-managed, no LISTEN, no advisory locks held across
    # releases), so the round trip is pure cost on the flush path.
    return None


async def create_db_pool(
    settings: Settings,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    init: Callable[[Any], Awaitable[None]] | None = None,
) -> asyncpg.Pool:
    db = await asyncpg.create_pool(
        settings.dsn,
        min_size=settings.db_pool_min if min_size is None else min_size,
        max_size=settings.db_pool_max if max_size is None else max_size,
        command_timeout=settings.db_command_timeout_s,
        timeout=5,
        reset=_no_reset,
        init=init,  # type: ignore[arg-type]  # the stubs want their own callback protocol
    )
    assert db is not None
    return db
