"""Cache-aside over the cache Redis, generic over key families, safe against stampedes.

- **Hit**: one GET. The entry carries how long its value took to compute (delta) and when it
  expires; XFetch (Vattani et al., "Optimal Probabilistic Cache Stampede Prevention") renews it
  early with a probability that rises as expiry nears: refresh when
  `-delta * beta * ln(rand) >= time left`. Hot keys are thus reloaded by one caller before they
  expire instead of by everyone at once after.
- **Miss**: callers in one process share one flight (a task), so a process asks Redis once. Across
  processes, `cache_acquire.lua` hands a short lease (SET NX PX) to exactly one caller, who loads
  and stores through `cache_fill.lua`; the others wait for the value *without polling*.
- **Waiting**: every process keeps ONE pub/sub connection, PSUBSCRIBEd to the ready channels, and
  fans messages out to asyncio futures. Chosen over BLPOP on a per-key list because BLPOP holds a
  pooled connection per waiter (200 waiters, 200 connections) and needs list clean-up; pub/sub
  costs one connection per process and the fill script publishes the entry itself, so a waiter
  needs no second GET. A waiter registers its future *before* asking for the lease, so a fill
  that lands after the lease attempt cannot be missed. A message lost while the listener
  reconnects, or a lease holder that died, costs a waiter at most the lease: it then looks again
  and takes the lease itself; after a few rounds it loads from Postgres uncached.
- **Invalidation** (after a write commits) deletes the entry and any lease and moves the key's
  generation on; a loader that read the old row stores it only if the generation is still the
  one it saw, so a stale value can never land after an invalidation. Fill messages carry their
  generation, so a waiter ignores one from before an invalidation (a delayed delivery), and a
  caller joins a flight of its process only if the flight's value was known current at or after
  the caller arrived (it may have read Postgres before another process's write).
- **Misses of missing things** are cached too (negative entries, short TTL).
- **Cache Redis down**: read from the loader (Postgres), count a fallback, and skip the cache
  for `retry_s` so a dead server does not cost every request a connection attempt. Never raises
  for a read; `invalidate` does raise, since its caller must not claim success without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from redis.asyncio import Redis

from shared.infra.clock import now_ms
from shared.infra.dependencies import REDIS_DOWN
from shared.infra.listener import Listener
from shared.store.keys import Keys
from shared.store.scripts import CacheScripts

log = logging.getLogger("redline.cache")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# What a down or unreachable cache Redis raises (TimeoutError is an OSError).
# How many lease-wait rounds before a reader gives up on the cache and loads uncached.
MAX_ROUNDS = 3
# A generation must outlive any load in flight; past that it may go (a missing generation only
# makes a fill refuse, never accept a stale value).
MIN_GEN_TTL_MS = 60_000


@dataclass(frozen=True)
class Family(Generic[T]):
    """A key family: one kind of cached thing, with its TTLs and its text encoding."""

    name: str
    ttl_s: int
    negative_ttl_s: int
    encode: Callable[[T], str]
    decode: Callable[[str], T]

    @staticmethod
    def of_model(name: str, model: type[M], ttl_s: int, negative_ttl_s: int) -> Family[M]:
        return Family(
            name, ttl_s, negative_ttl_s, lambda v: v.model_dump_json(), model.model_validate_json
        )


@dataclass
class FamilyStats:
    hits: int = 0
    negative_hits: int = 0
    misses: int = 0
    loads: int = 0
    fallbacks: int = 0
    waits: int = 0
    wait_timeouts: int = 0
    early_refreshes: int = 0
    refused_fills: int = 0
    invalidations: int = 0
    warmed: int = 0


@dataclass
class CacheStats:
    """Per-process counters per key family; `numbers()` is what /metrics and /stats export."""

    families: dict[str, FamilyStats] = field(default_factory=dict)

    def of(self, family: str) -> FamilyStats:
        return self.families.setdefault(family, FamilyStats())

    def numbers(self) -> dict[str, dict[str, int]]:
        return {
            name: {f.name: getattr(s, f.name) for f in fields(s)}
            for name, s in sorted(self.families.items())
        }

    def hit_rate(self) -> float | None:
        """Hits (negative ones included) over lookups answered by or through the cache."""
        hits = sum(s.hits + s.negative_hits for s in self.families.values())
        lookups = hits + sum(s.misses for s in self.families.values())
        return hits / lookups if lookups else None


@dataclass(frozen=True, slots=True)
class Flight(Generic[T]):
    """What one fill found: the value, and a monotonic time at which it was known current."""

    value: T | None
    valid_at: float


@dataclass(frozen=True, slots=True)
class Entry:
    """`<delta ms>|<expiry ms>|<payload>`; an empty payload is a negative entry (no such thing)."""

    delta_ms: float
    expiry_ms: float
    payload: str | None

    def text(self) -> str:
        return f"{self.delta_ms:.0f}|{self.expiry_ms:.0f}|{self.payload or ''}"

    @staticmethod
    def parse(text: str) -> Entry:
        delta, expiry, payload = text.split("|", 2)
        return Entry(float(delta), float(expiry), payload or None)


def _unit_random() -> float:
    return 1.0 - random.random()  # (0, 1]: ln() is defined


class Cache:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        lease_ms: int = 2000,
        xfetch_beta: float = 1.0,
        retry_s: float = 1.0,
        rand: Callable[[], float] = _unit_random,
        clock: Callable[[], float] = now_ms,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._scripts = CacheScripts(redis, keys)
        self.lease_ms = lease_ms
        self.beta = xfetch_beta
        self.retry_s = retry_s
        # Injectable for tests: rand in (0, 1], clock in epoch milliseconds.
        self.rand = rand
        self.clock = clock
        self.stats = CacheStats()
        self._gen_ttl_ms = max(MIN_GEN_TTL_MS, lease_ms * 4)
        self._down_until = 0.0
        self._flights: dict[tuple[str, str], asyncio.Task[Any]] = {}
        self._waiters: dict[str, set[asyncio.Queue[str]]] = {}
        self._listener = Listener(
            "cache listener", on_up=self._subscribed_now, on_down=self._unsubscribed
        )
        self._listening: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    # Lifecycle ---------------------------------------------------------------------------
    async def start(self, wait_s: float = 2.0) -> None:
        """Start the pub/sub listener; wait briefly for its subscription (not at all if the
        cache Redis is down: readers then fall back until it is back)."""
        self._listening = asyncio.create_task(
            self._listener.run(self._session), name="cache-listener"
        )
        try:
            await asyncio.wait_for(self._subscribed.wait(), wait_s)
        except TimeoutError:
            log.warning("cache listener not subscribed yet; waiting readers may be slower")

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
        flights = list(self._flights.values())
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    # Reads -------------------------------------------------------------------------------
    async def get(
        self, family: Family[T], item: str, loader: Callable[[], Awaitable[T | None]]
    ) -> T | None:
        stats = self.stats.of(family.name)
        if time.monotonic() < self._down_until:
            stats.fallbacks += 1
            return await loader()
        try:
            raw = await self._redis.get(self._keys.cache_entry(family.name, item))
        except REDIS_DOWN as exc:
            self._trip(exc)
            stats.fallbacks += 1
            return await loader()
        if raw is None:
            stats.misses += 1
            return await self._flight(family, item, loader)
        try:
            entry = Entry.parse(raw)
            value = None if entry.payload is None else family.decode(entry.payload)
        except ValueError:
            # Not ours or from an older format: serve from Postgres until it expires or changes.
            log.warning("unreadable cache entry for %s %s", family.name, item)
            stats.fallbacks += 1
            return await loader()
        if entry.payload is None:
            stats.negative_hits += 1
        else:
            stats.hits += 1
        if self._should_refresh(entry):
            return await self._refresh(family, item, loader, value)
        return value

    def _should_refresh(self, entry: Entry) -> bool:
        if self.beta <= 0:
            return False
        left = entry.expiry_ms - self.clock()
        return -entry.delta_ms * self.beta * math.log(self.rand()) >= left

    async def _refresh(
        self,
        family: Family[T],
        item: str,
        loader: Callable[[], Awaitable[T | None]],
        current: T | None,
    ) -> T | None:
        """XFetch's early recompute by whoever wins the lease; the others keep the old value."""
        token = secrets.token_hex(8)
        try:
            got = await self._scripts.acquire(
                family.name, item, token, self.lease_ms, token, self._gen_ttl_ms, refresh=True
            )
        except REDIS_DOWN as exc:
            self._trip(exc)
            return current
        if not got.leased:
            return current
        self.stats.of(family.name).early_refreshes += 1
        flight = await self._load_and_fill(family, item, loader, token, got.generation)
        return flight.value

    async def _flight(
        self, family: Family[T], item: str, loader: Callable[[], Awaitable[T | None]]
    ) -> T | None:
        """One fill per key per process; the task outlives a caller that goes away.

        A caller may only take a flight's value if it was known current at or after the moment
        the caller arrived: a caller that joins late (after another process's write and
        invalidation, say) must not get a value the flight read before that write."""
        key = (family.name, item)
        arrived = time.monotonic()
        for _ in range(2):  # a second flight starts after `arrived`, so it always qualifies
            task = self._flights.get(key)
            if task is None or task.done():
                task = asyncio.create_task(self._fill(family, item, loader))
                self._flights[key] = task
                task.add_done_callback(lambda t: self._end_flight(key, t))
            result: Flight[T] = await asyncio.shield(task)
            if result.valid_at >= arrived:
                return result.value
            if self._flights.get(key) is task:
                del self._flights[key]
        self.stats.of(family.name).fallbacks += 1
        return await loader()

    def _end_flight(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception never retrieved" noise

    async def _fill(
        self, family: Family[T], item: str, loader: Callable[[], Awaitable[T | None]]
    ) -> Flight[T]:
        stats = self.stats.of(family.name)
        channel = self._keys.cache_ready(family.name, item)
        for _ in range(MAX_ROUNDS):
            inbox = self._wait_for(channel)
            try:
                token = secrets.token_hex(8)
                sent = time.monotonic()
                try:
                    got = await self._scripts.acquire(
                        family.name, item, token, self.lease_ms, token, self._gen_ttl_ms
                    )
                except REDIS_DOWN as exc:
                    self._trip(exc)
                    break
                if got.entry is not None:
                    found = await self._value(family, got.entry, loader)
                    return Flight(found, sent)
                if got.leased:
                    return await self._load_and_fill(family, item, loader, token, got.generation)
                stats.waits += 1
                text = await self._await_fill(inbox, got.generation)
                if text is None:
                    stats.wait_timeouts += 1  # the holder died, or a message was lost
                    continue
                if text:
                    # Stored under the generation our acquire saw, so current at `sent`.
                    filled = await self._value(family, text, loader)
                    return Flight(filled, sent)
                # An empty message: that load failed or was invalidated; look again.
            finally:
                self._stop_waiting(channel, inbox)
        stats.fallbacks += 1
        started = time.monotonic()
        return Flight(await loader(), started)

    async def _await_fill(self, inbox: asyncio.Queue[str], gen: str) -> str | None:
        """The entry filled under `gen`, "" to look again, None when the lease ran out.
        Fills under another generation (a message from before an invalidation) are ignored."""
        try:
            async with asyncio.timeout(self.lease_ms / 1000):
                while True:
                    message = await inbox.get()
                    if not message:
                        return ""
                    message_gen, _, entry = message.partition("|")
                    if message_gen == gen:
                        return entry
        except TimeoutError:
            return None

    async def _value(
        self, family: Family[T], text: str, loader: Callable[[], Awaitable[T | None]]
    ) -> T | None:
        try:
            payload = Entry.parse(text).payload
            return None if payload is None else family.decode(payload)
        except ValueError:
            log.warning("unreadable cache entry for %s", family.name)
            self.stats.of(family.name).fallbacks += 1
            return await loader()

    async def _load_and_fill(
        self,
        family: Family[T],
        item: str,
        loader: Callable[[], Awaitable[T | None]],
        token: str,
        gen: str,
    ) -> Flight[T]:
        stats = self.stats.of(family.name)
        started, read_after = self.clock(), time.monotonic()
        try:
            value = await loader()
        except BaseException:
            # Wake the waiters now rather than after the lease: they try again themselves.
            await self._release(family, item, token, gen)
            raise
        stats.loads += 1
        filling = time.monotonic()
        stored = await self._store(family, item, value, self.clock() - started, token, gen)
        # Stored: nothing invalidated it up to the fill. Refused: read after `read_after` only.
        return Flight(value, filling if stored else read_after)

    async def _store(
        self, family: Family[T], item: str, value: T | None, delta_ms: float, token: str, gen: str
    ) -> bool:
        ttl_s = family.ttl_s if value is not None else family.negative_ttl_s
        payload = None if value is None else family.encode(value)
        entry = Entry(max(delta_ms, 0.0), self.clock() + ttl_s * 1000, payload)
        try:
            stored = await self._scripts.fill(
                family.name, item, entry.text(), ttl_s * 1000, gen, token
            )
        except REDIS_DOWN as exc:
            self._trip(exc)
            return False
        if not stored:
            self.stats.of(family.name).refused_fills += 1
        return stored

    async def _release(self, family: Family[T], item: str, token: str, gen: str) -> None:
        try:
            await self._scripts.fill(family.name, item, "", 0, gen, token)
        except REDIS_DOWN as exc:
            self._trip(exc)

    # Writes ------------------------------------------------------------------------------
    async def invalidate(self, family: Family[T], item: str) -> None:
        """Call after the write commits. Raises the Redis error if the cache is unreachable:
        the caller must not report success while a stale entry may survive."""
        # A flight of this process that began before the write must not serve later callers.
        self._flights.pop((family.name, item), None)
        await self._scripts.invalidate(family.name, item, secrets.token_hex(8), self._gen_ttl_ms)
        self.stats.of(family.name).invalidations += 1

    async def warm(
        self,
        family: Family[T],
        items: Sequence[str],
        load_many: Callable[[list[str]], Awaitable[dict[str, T]]],
    ) -> int:
        """Preload the items not cached yet, with one `load_many` call; returns how many were
        stored. Leases and generations as for a miss, so warming never overwrites a newer
        value nor races an invalidation."""
        leased: dict[str, tuple[str, str]] = {}
        for item in items:
            token = secrets.token_hex(8)
            got = await self._scripts.acquire(
                family.name, item, token, self.lease_ms, token, self._gen_ttl_ms
            )
            if got.leased:
                leased[item] = (token, got.generation)
        if not leased:
            return 0
        started = self.clock()
        try:
            values = await load_many(list(leased))
        except BaseException:
            for item, (token, gen) in leased.items():
                await self._release(family, item, token, gen)
            raise
        delta = (self.clock() - started) / len(leased)
        stored = 0
        for item, (token, gen) in leased.items():
            stored += await self._store(family, item, values.get(item), delta, token, gen)
        self.stats.of(family.name).warmed += stored
        return stored

    # Pub/sub -----------------------------------------------------------------------------
    def _wait_for(self, channel: str) -> asyncio.Queue[str]:
        inbox: asyncio.Queue[str] = asyncio.Queue()
        self._waiters.setdefault(channel, set()).add(inbox)
        return inbox

    def _stop_waiting(self, channel: str, inbox: asyncio.Queue[str]) -> None:
        waiting = self._waiters.get(channel)
        if waiting is not None:
            waiting.discard(inbox)
            if not waiting:
                del self._waiters[channel]

    def _dispatch(self, channel: str, data: str) -> None:
        for inbox in self._waiters.get(channel, ()):
            inbox.put_nowait(data)

    async def _session(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.psubscribe(self._keys.cache_ready_pattern)
            self._listener.up()
            while True:
                # A blocking read with a timeout, so health checks run; not a poll of Redis.
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                self._listener.check()
                if msg is not None and msg["type"] == "pmessage":
                    self._dispatch(msg["channel"], msg["data"])
        finally:
            with contextlib.suppress(*REDIS_DOWN):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _subscribed_now(self) -> None:
        self._subscribed.set()

    def _unsubscribed(self) -> None:
        self._subscribed.clear()

    def _trip(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            log.warning("cache Redis unavailable (%r); reading from Postgres", exc)
        self._down_until = time.monotonic() + self.retry_s

    @property
    def listening(self) -> bool:
        return self._subscribed.is_set()

    async def info(self) -> dict[str, Any]:
        """The cache Redis's own numbers: memory, clients, evictions."""
        memory, clients, stats = await asyncio.gather(
            self._redis.info("memory"), self._redis.info("clients"), self._redis.info("stats")
        )
        return {
            "used_memory_bytes": int(memory.get("used_memory", 0)),
            "maxmemory_bytes": int(memory.get("maxmemory", 0)),
            "connected_clients": int(clients.get("connected_clients", 0)),
            "evicted_keys": int(stats.get("evicted_keys", 0)),
        }
