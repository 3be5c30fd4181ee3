"""Real servers for the whole session, clean state for every test.

The session starts an embedded Valkey and PostgreSQL under .data/test/ (or uses
REDLINE_TEST_REDIS_URL / REDLINE_TEST_DATABASE_URL). Each test starts from an empty Redis
database and empty tables.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from deploy.embedded import Postgres, Valkey, free_port
from services.api.app import create_app
from shared.infra.clients import redis_client
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.migrations import migrate_url

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("document_members", "documents", "users", "tenants")


@dataclass
class Servers:
    redis_url: str
    database_url: str
    valkey: Valkey | None
    postgres: Postgres | None


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    redis_url = os.environ.get("REDLINE_TEST_REDIS_URL")
    database_url = os.environ.get("REDLINE_TEST_DATABASE_URL")
    data = ROOT / ".data" / f"test-{os.getpid()}"
    valkey = postgres = None
    try:
        if redis_url is None:
            valkey = Valkey(data / "valkey", free_port(), aof=False)
            valkey.start()
            redis_url = valkey.url
        if database_url is None:
            postgres = Postgres(data / "postgres", free_port(), durable=False)
            postgres.start()
            database_url = postgres.url
        yield Servers(redis_url, database_url, valkey, postgres)
    finally:
        if postgres is not None:
            postgres.stop(mode="immediate")
        if valkey is not None:
            valkey.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
async def migrated(servers: Servers) -> Servers:
    await migrate_url(servers.database_url)
    return servers


def make_settings(servers: Servers, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        env="test",
        redis_url=servers.redis_url,
        database_url=servers.database_url,
        key_prefix="rlt",
        doc_shards=8,
        flush_interval=1,
        flush_batch_size=100,
        presence_ttl_s=60,
        argon2_time_cost=1,
        argon2_memory_kib=64,
        argon2_parallelism=1,
        login_rate=1000,
        edit_rate=100_000,  # load and fault tests type fast; test_editlane.py tests the limit
        create_rate=100_000,  # some tests create hundreds of documents; test_ratelimit.py tests it
        max_document_bytes=64 * 1024,
        db_pool_min=0,
        # Tests that want the flusher's metrics port give it a free one.
        flusher_metrics_port=0,
    )
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(migrated: Servers) -> Settings:
    return make_settings(migrated)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.state_url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def binary(settings: Settings) -> AsyncIterator[Redis]:
    """The state Redis with replies left as bytes, as the co-editing scripts want."""
    client = redis_client(settings.state_url, binary=True)
    yield client
    await client.aclose()


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix, settings.doc_shards)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.dsn)
    yield conn
    await conn.close()


@pytest.fixture(autouse=True)
async def clean_state(request: pytest.FixtureRequest) -> None:
    """Empty Redis and Postgres before each test that touches them."""
    if "migrated" not in request.fixturenames:
        return
    servers: Servers = request.getfixturevalue("migrated")
    client = Redis.from_url(servers.redis_url)
    await client.flushdb()
    await client.aclose()
    conn = await asyncpg.connect(servers.database_url)
    await conn.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    await conn.close()


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client
