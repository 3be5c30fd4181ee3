"""The stampede-proof cache against the real cache Redis and Postgres: one load per cold key
across "processes" (separate Cache instances and clients), waiting woken by pub/sub, dead lease
holders, invalidation racing a loader, XFetch early refresh, negative entries, a dead Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from deploy.embedded import Valkey, free_port
from shared.domain import profiles
from shared.domain.models import Profile
from shared.infra.cache import Cache, Entry, Family
from shared.infra.clients import cache_client, create_db_pool
from shared.settings import Settings
from shared.store import queries
from shared.store.keys import Keys
from shared.store.scripts import CacheScripts

FAMILY = Family.of_model("profile", Profile, ttl_s=60, negative_ttl_s=5)


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_db_pool(settings, min_size=0, max_size=4)
    yield pool
    await pool.close()


@asynccontextmanager
async def cache_on(url: str, keys: Keys, **options: object) -> AsyncIterator[Cache]:
    """A Cache with its own client, as one api process would have."""
    client = cache_client(url, 0.5)
    cache = Cache(client, keys, **options)  # type: ignore[arg-type]
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()
        await client.aclose()


async def make_user(db: asyncpg.Connection, name: str = "alice") -> str:
    tenant, user = str(uuid.uuid4()), str(uuid.uuid4())
    await queries.insert_tenant(db, tenant, "t")
    await queries.insert_user(db, user, tenant, name, "x", "owner")
    return user


async def read(
    cache: Cache, user: str, loader: Callable[[], Awaitable[Profile | None]]
) -> Profile | None:
    return await cache.get(FAMILY, user, loader)


class CountingLoader:
    """A real Postgres load (optionally slowed down in Postgres itself) that counts its calls."""

    def __init__(self, pool: asyncpg.Pool, user_id: str, sleep_s: float = 0.0) -> None:
        self.pool = pool
        self.user_id = user_id
        self.sleep_s = sleep_s
        self.calls = 0

    async def load(self) -> Profile | None:
        self.calls += 1
        async with self.pool.acquire() as conn:
            if self.sleep_s:
                await conn.execute("SELECT pg_sleep($1)", self.sleep_s)
            return await profiles.load(conn, self.user_id)


async def test_200_concurrent_cold_reads_over_four_processes_load_once(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    user = await make_user(db)
    loader = CountingLoader(pool, user, sleep_s=0.2)
    async with (
        cache_on(settings.cache_url, keys, lease_ms=10_000) as a,
        cache_on(settings.cache_url, keys, lease_ms=10_000) as b,
        cache_on(settings.cache_url, keys, lease_ms=10_000) as c,
        cache_on(settings.cache_url, keys, lease_ms=10_000) as d,
    ):
        caches = [a, b, c, d]
        started = time.perf_counter()
        results = await asyncio.gather(
            *(read(caches[i % 4], user, loader.load) for i in range(200))
        )
        elapsed = time.perf_counter() - started
    assert loader.calls == 1
    assert {r.user_id for r in results if r is not None} == {user}
    assert all(r is not None for r in results)
    stats = [cache.stats.of("profile") for cache in caches]
    assert sum(s.loads for s in stats) == 1
    # The other processes were woken by the fill's message, not by their 10 s lease timeout.
    assert sum(s.wait_timeouts for s in stats) == 0
    assert sum(s.fallbacks for s in stats) == 0
    assert elapsed < 5, elapsed


async def test_waiters_take_over_when_the_lease_holder_dies(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    user = await make_user(db)
    loader = CountingLoader(pool, user)
    # A holder that took the lease and died before filling.
    dead = CacheScripts(redis, keys)
    got = await dead.acquire("profile", user, "dead", 300, "g0", 60_000)
    assert got.leased
    async with cache_on(settings.cache_url, keys, lease_ms=300) as cache:
        started = time.perf_counter()
        profile = await cache.get(FAMILY, user, loader.load)
        waited = time.perf_counter() - started
        stats = cache.stats.of("profile")
    assert profile is not None and profile.user_id == user
    assert loader.calls == 1
    assert stats.wait_timeouts == 1
    assert 0.25 <= waited < 3


async def test_invalidation_during_a_load_refuses_the_stale_fill(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    user = await make_user(db)
    async with (
        cache_on(settings.cache_url, keys) as reader,
        cache_on(settings.cache_url, keys) as writer,
    ):

        async def slow_old_read() -> Profile | None:
            async with pool.acquire() as conn:
                old = await profiles.load(conn, user)
                # Another process commits a change and invalidates while this load is in flight.
                await profiles.save(conn, user, {"display_name": "new"})
            await writer.invalidate(FAMILY, user)
            return old

        first = await reader.get(FAMILY, user, slow_old_read)
        assert first is not None and first.display_name == ""  # it overlapped the write
        assert reader.stats.of("profile").refused_fills == 1
        assert await redis.get(keys.cache_entry("profile", user)) is None
        fresh = CountingLoader(pool, user)
        second = await reader.get(FAMILY, user, fresh.load)
    assert fresh.calls == 1
    assert second is not None and second.display_name == "new"


class FakeClock:
    def __init__(self) -> None:
        self.ms = 1_000_000_000_000.0

    def __call__(self) -> float:
        return self.ms


async def test_xfetch_refreshes_early_by_the_injected_randomness(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    user = await make_user(db)
    clock = FakeClock()
    rand = [1.0]
    calls = 0

    async def loader() -> Profile | None:
        nonlocal calls
        calls += 1
        clock.ms += 100  # each load "takes" 100 ms: delta = 100
        async with pool.acquire() as conn:
            return await profiles.load(conn, user)

    family = Family.of_model("profile", Profile, ttl_s=10, negative_ttl_s=5)
    async with cache_on(
        settings.cache_url, keys, xfetch_beta=1.0, clock=clock, rand=lambda: rand[0]
    ) as cache:
        await cache.get(family, user, loader)
        assert calls == 1
        clock.ms += 9_000  # 1 s before expiry (expiry = load end + 10 s)
        # Refresh iff 100 ms * -ln(r) >= ~900 ms, i.e. r <= e^-9 ~ 1.2e-4.
        for r in (1.0, 0.5, 1e-3):
            rand[0] = r
            await cache.get(family, user, loader)
        assert calls == 1, "no early refresh while -delta*ln(r) < time left"
        rand[0] = 1e-5
        await cache.get(family, user, loader)
        assert calls == 2
        assert cache.stats.of("profile").early_refreshes == 1
        # The refresh stored a new expiry: the same draw no longer triggers one.
        clock.ms += 1_000
        await cache.get(family, user, loader)
        assert calls == 2


async def test_missing_users_are_cached_briefly(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, redis: Redis
) -> None:
    ghost = str(uuid.uuid4())
    loader = CountingLoader(pool, ghost)
    async with cache_on(settings.cache_url, keys) as cache:
        assert await cache.get(FAMILY, ghost, loader.load) is None
        assert await cache.get(FAMILY, ghost, loader.load) is None
        assert loader.calls == 1
        assert cache.stats.of("profile").negative_hits == 1
        ttl = await redis.pttl(keys.cache_entry("profile", ghost))
        assert 0 < ttl <= FAMILY.negative_ttl_s * 1000
        raw = await redis.get(keys.cache_entry("profile", ghost))
        assert Entry.parse(raw).payload is None
        # A write (e.g. the user now exists) invalidates the negative entry too.
        await cache.invalidate(FAMILY, ghost)
        assert await cache.get(FAMILY, ghost, loader.load) is None
        assert loader.calls == 2


async def test_a_failed_load_wakes_waiters_at_once(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    user = await make_user(db)
    gate = asyncio.Event()

    async def failing() -> Profile | None:
        await gate.wait()
        raise asyncpg.PostgresConnectionError("postgres went away")

    good = CountingLoader(pool, user)
    async with (
        cache_on(settings.cache_url, keys, lease_ms=10_000) as a,
        cache_on(settings.cache_url, keys, lease_ms=10_000) as b,
    ):
        holder = asyncio.create_task(read(a, user, failing))
        await asyncio.sleep(0.1)  # a holds the lease
        waiter = asyncio.create_task(read(b, user, good.load))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        gate.set()
        with pytest.raises(asyncpg.PostgresConnectionError):
            await holder
        profile = await waiter
        assert time.perf_counter() - started < 2, "woken by the release, not the 10 s lease"
    assert profile is not None and good.calls == 1


async def test_warming_stores_only_what_is_missing(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    users = [await make_user(db, f"user{i}") for i in range(5)]
    batches: list[list[str]] = []

    async def load_many(ids: list[str]) -> dict[str, Profile]:
        batches.append(ids)
        async with pool.acquire() as conn:
            return {p.user_id: p for p in await profiles.load_many(conn, ids)}

    async with cache_on(settings.cache_url, keys) as cache:
        await cache.get(FAMILY, users[0], CountingLoader(pool, users[0]).load)
        assert await cache.warm(FAMILY, users, load_many) == 4
        assert sorted(batches[0]) == sorted(users[1:])
        assert await cache.warm(FAMILY, users, load_many) == 0
        never = CountingLoader(pool, users[3])
        assert (await cache.get(FAMILY, users[3], never.load)) is not None
        assert never.calls == 0


async def test_a_dead_cache_redis_falls_back_to_postgres(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection, tmp_path: Path
) -> None:
    user = await make_user(db)
    server = Valkey(tmp_path / "cache", free_port(), aof=False)
    server.start()
    try:
        async with cache_on(server.url, keys, retry_s=0.2) as cache:
            loader = CountingLoader(pool, user)
            assert await cache.get(FAMILY, user, loader.load) is not None
            assert await cache.get(FAMILY, user, loader.load) is not None
            assert loader.calls == 1
            server.stop()
            for _ in range(3):
                profile = await cache.get(FAMILY, user, loader.load)
                assert profile is not None and profile.user_id == user
            assert loader.calls == 4
            assert cache.stats.of("profile").fallbacks == 3
            # A write must not be reported done while a stale entry might survive.
            with pytest.raises((RedisError, OSError)):
                await cache.invalidate(FAMILY, user)
    finally:
        server.stop()


async def test_an_unreadable_entry_is_served_from_postgres_not_a_500(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    user = await make_user(db)
    await redis.set(keys.cache_entry("profile", user), "not|an|entry", px=60_000)
    loader = CountingLoader(pool, user)
    async with cache_on(settings.cache_url, keys) as cache:
        profile = await cache.get(FAMILY, user, loader.load)
        assert profile is not None and profile.user_id == user
        assert cache.stats.of("profile").fallbacks == 1
        # The write path replaces it with a good entry.
        await cache.invalidate(FAMILY, user)
        assert await cache.get(FAMILY, user, loader.load) is not None
        assert await cache.get(FAMILY, user, loader.load) is not None
        assert loader.calls == 2


async def test_a_caller_arriving_after_a_write_never_joins_a_stale_flight(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    user = await make_user(db)
    loaded, gate = asyncio.Event(), asyncio.Event()

    async def old_then_block() -> Profile | None:
        async with pool.acquire() as conn:
            old = await profiles.load(conn, user)
        loaded.set()
        await gate.wait()
        return old

    async with (
        cache_on(settings.cache_url, keys) as reader,
        cache_on(settings.cache_url, keys) as writer,
    ):
        early = asyncio.create_task(read(reader, user, old_then_block))
        await loaded.wait()
        # Another process's PATCH: commit, invalidate, answer the client.
        await db.execute("INSERT INTO profiles (user_id, display_name) VALUES ($1, 'new')", user)
        await writer.invalidate(FAMILY, user)
        fresh = CountingLoader(pool, user)
        late = asyncio.create_task(read(reader, user, fresh.load))
        await asyncio.sleep(0.05)  # `late` missed and found the early flight in progress
        gate.set()
        early_value, late_value = await early, await late
    assert early_value is not None and early_value.display_name == ""  # it overlapped the write
    assert late_value is not None and late_value.display_name == "new"
    assert fresh.calls == 1


async def test_a_waiter_ignores_a_fill_message_from_before_an_invalidation(
    settings: Settings, keys: Keys, pool: asyncpg.Pool, db: asyncpg.Connection, redis: Redis
) -> None:
    user = await make_user(db)
    holder = CacheScripts(redis, keys)
    got = await holder.acquire("profile", user, "holder", 10_000, "g-now", 60_000)
    assert got.leased and got.generation == "g-now"
    async with pool.acquire() as conn:
        current = await profiles.load(conn, user)
    assert current is not None
    stale = current.model_copy(update={"display_name": "stale"})
    never = CountingLoader(pool, user)
    async with cache_on(settings.cache_url, keys, lease_ms=10_000) as cache:
        waiter = asyncio.create_task(read(cache, user, never.load))
        await asyncio.sleep(0.1)
        channel = keys.cache_ready("profile", user)
        old_entry = Entry(1, 9e15, stale.model_dump_json()).text()
        # Delayed delivery of a fill made under the previous generation.
        await redis.publish(channel, f"g-before|{old_entry}")
        await asyncio.sleep(0.05)
        assert not waiter.done()
        fresh_entry = Entry(1, 9e15, current.model_dump_json()).text()
        assert await holder.fill("profile", user, fresh_entry, 60_000, "g-now", "holder")
        value = await asyncio.wait_for(waiter, 2)
    assert value is not None and value.display_name == current.display_name != "stale"
    assert never.calls == 0
