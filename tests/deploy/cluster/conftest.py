"""Run the write-behind tests against a real 3-master Valkey cluster.

The fixtures the api, flusher and worker tests use (`settings`, `redis`, `keys`, `flusher`,
`second_flusher`) are redefined here in cluster mode: state and cache on the cluster, the arq
queue on the session's plain Valkey (arq does not support Redis Cluster). The tests themselves are
the same functions, imported into test_cluster.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.flusher.flush import Flusher
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import ROOT, Servers, make_settings
from tests.support.flushers import flusher_of
from tests.support.valkeys import Cluster, valkey_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with valkey_cluster(ROOT / ".data" / f"test-{os.getpid()}-cluster") as started:
        yield started


@pytest.fixture
def settings(migrated: Servers, cluster: Cluster) -> Settings:
    return make_settings(
        migrated,
        redis_url=cluster.url,
        queue_redis_url=migrated.redis_url,
        redis_cluster=True,
        # Enough shards that documents land on every node.
        doc_shards=16,
    )


@pytest.fixture(autouse=True)
async def empty_cluster(cluster: Cluster) -> None:
    client = RedisCluster.from_url(cluster.url)
    await client.flushdb()  # redis-py sends FLUSHDB to every primary
    await client.aclose()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = cast(Redis, RedisCluster.from_url(settings.state_url, decode_responses=True))
    yield client
    await client.aclose()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix, settings.doc_shards)


async def _flusher(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Flusher]:
    async with flusher_of(settings, redis, keys) as flusher:
        yield flusher


@pytest.fixture
async def flusher(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Flusher]:
    async for f in _flusher(settings, redis, keys):
        yield f


@pytest.fixture
async def second_flusher(settings: Settings, redis: Redis, keys: Keys) -> AsyncIterator[Flusher]:
    async for f in _flusher(settings, redis, keys):
        yield f
