"""Typed wrappers around the Lua scripts in shared/store/lua/. Each script is read once, registered
once per client (EVALSHA, reloaded by redis-py if the server lost it) and called only from here."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Any, TypedDict

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store.keys import Keys

LUA_DIR = Path(__file__).parent / "lua"
_INCLUDE = re.compile(r"^-- include: (\w+)$", re.M)


def lua_source(name: str) -> str:
    """A script's text, each `-- include: <lib>` line replaced by lua/lib/<lib>.lua (Redis
    scripts cannot load one another: shared functions are pasted in)."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    return _INCLUDE.sub(lambda m: (LUA_DIR / "lib" / f"{m.group(1)}.lua").read_text(), text)


NAMES = (
    "edit",
    "seed",
    "claim",
    "release",
    "mark_clean",
    "delete",
    "presence_join",
    "presence_leave",
    "gcra",
    "match",
    "pool_refresh",
    "pool_leave",
    "quarantine",
    "rebase",
)


# Documents per flush script call (the read, mark_clean): few enough calls to save redis-py's
# per-command cost, small enough that one call holds Redis up for little (a co-edited document
# ships its whole state).
SLICE = 50
# And at most this many bytes of states and texts a call and a round trip (one document at
# least): a script holds Redis's one thread while it copies them in, ~1 ms per 512 KB, so a
# round trip of many large documents would hold every append up for tens of milliseconds.
ROUND_BYTES = 1 << 20


def rounds(items: Sequence[int], sizes: Sequence[int], limit: int = ROUND_BYTES) -> list[list[int]]:
    """`items` in order, cut into runs of at most `limit` bytes by `sizes` (one item at least)."""
    out: list[list[int]] = []
    total = 0
    for item, size in zip(items, sizes, strict=True):
        if not out or total + size > limit:
            out.append([])
            total = 0
        out[-1].append(item)
        total += size
    return out


@dataclass(frozen=True, slots=True)
class Fold:
    """A co-edited document's fold, written to Postgres, for mark_clean to keep in Redis: its
    state and text, the last log id it holds, the log bytes it folded and the folded id it started
    from (the one read)."""

    doc_id: str
    folded_id: str
    state: bytes
    text: str
    folded_bytes: int
    base_id: str


class QuarantineStatus(IntEnum):
    """What shared/store/lua/quarantine.lua did with one refused document."""

    QUARANTINED = 1
    ALREADY = 2  # in quarantine from an earlier flush (a save job retried it)
    EDITED = 0  # a newer version came since the read: left dirty for the next flush
    GONE = -1  # deleted meanwhile: nothing left to save


@dataclass(frozen=True, slots=True)
class EditReply:
    """edit.lua's reply. `status` is its code, as its header lists them (1 applied, 0 not loaded,
    -1 stale, -2 deleted, -3 no access, -4 rate limited: `version` then holds the milliseconds
    until a retry may succeed; -5 co-edited: the caller appends a diff update instead)."""

    status: int
    version: int
    saved_version: int


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: int
    retry_after_ms: int
    reset_after_ms: int


class MatchStatus(StrEnum):
    QUEUED = "queued"
    CLAIMED = "claimed"
    MATCHED = "matched"


@dataclass(frozen=True, slots=True)
class MatchReply:
    status: MatchStatus
    partner_id: str | None = None
    partner_ticket: str | None = None
    shared: tuple[str, ...] = ()


class EventsOptions(TypedDict):
    events_maxlen: int
    events_ttl_ms: int


def events_options(settings: Settings) -> EventsOptions:
    """The document event streams' cap and idle TTL, for `Scripts(..., **events_options(s))`."""
    return {
        "events_maxlen": settings.doc_events_maxlen,
        "events_ttl_ms": settings.doc_events_ttl_s * 1000,
    }


async def run_many(
    redis: Redis,
    script: AsyncScript,
    calls: Sequence[tuple[Sequence[Any], Sequence[Any]]],
) -> list[Any]:
    """Several calls of one script in one round trip (a pipeline). Redis Cluster refuses
    scripts in a pipeline, so there they go concurrently instead, one per call; each call's
    keys share one hash tag either way."""
    if isinstance(redis, RedisCluster):
        return list(await asyncio.gather(*(script(keys=k, args=a) for k, a in calls)))
    replies = await evalsha_pipelined(redis, script, [(len(k), *k, *a) for k, a in calls])
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


async def evalsha_pipelined(
    redis: Redis, script: AsyncScript, calls: Sequence[tuple[Any, ...]]
) -> list[Any]:
    """Each call's reply (or its error), in order, from one pipeline of EVALSHA
    (numkeys, *keys, *args). Not redis-py's pipelined Script, which first asks SCRIPT EXISTS: a
    second round trip each time. A server that lost its scripts (a restart, a flush) answers
    NOSCRIPT before running one, so those calls are loaded and sent again."""
    pipe = redis.pipeline(transaction=False)
    for args in calls:
        pipe.execute_command("EVALSHA", script.sha, *args)
    replies: list[Any] = await pipe.execute(raise_on_error=False)
    lost = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
    if lost:
        script.sha = await redis.script_load(script.script)
        pipe = redis.pipeline(transaction=False)
        for i in lost:
            pipe.execute_command("EVALSHA", script.sha, *calls[i])
        for i, reply in zip(lost, await pipe.execute(raise_on_error=False), strict=True):
            replies[i] = reply
    return replies


class Scripts:
    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        events_maxlen: int = 1000,
        events_ttl_ms: int = 86_400_000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        # Every script that appends to a document's event stream caps it (MAXLEN ~) and gives it
        # this TTL after its last event, so an idle document's stream does not live forever.
        self._events = (events_maxlen, events_ttl_ms)
        self._s = {name: redis.register_script(lua_source(name)) for name in NAMES}
        self._edit = self._s["edit"]  # the hot path: one lookup fewer per edit

    @property
    def redis(self) -> Redis:
        """The client the scripts run on (plain reads that need no script, e.g. a GCRA peek)."""
        return self._redis

    async def _call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._s[name](keys=keys, args=args)

    def _edit_call(
        self,
        doc_id: str,
        content: str,
        base_version: int | None,
        author: str,
        now_ms: int,
        grants: Sequence[str],
        rate: tuple[int, int] | None,
    ) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        k = self._keys
        interval, burst = rate or (0, 0)
        keys = (
            k.doc(doc_id),
            k.doc_dirty(doc_id),
            k.edit_rate(doc_id, author),
            k.doc_events(doc_id),
            k.doc_quarantine(doc_id),
        )
        args = (
            doc_id,
            content,
            "" if base_version is None else base_version,
            author,
            now_ms,
            interval,
            burst,
            *self._events,
            *grants,
        )
        return keys, args

    async def edit(
        self,
        doc_id: str,
        content: str,
        base_version: int | None,
        author: str,
        now_ms: int,
        grants: Sequence[str],
        rate: tuple[int, int] | None = None,
    ) -> EditReply:
        """`rate` is (ms per edit, burst) for this author on this document; None: no limit."""
        keys, args = self._edit_call(doc_id, content, base_version, author, now_ms, grants, rate)
        status, version, saved = await self._edit(keys=keys, args=args)
        return EditReply(int(status), int(version), int(saved))

    async def edit_replicated(
        self,
        doc_id: str,
        content: str,
        base_version: int | None,
        author: str,
        now_ms: int,
        grants: Sequence[str],
        rate: tuple[int, int] | None,
        replicas: int,
        timeout_ms: int,
    ) -> tuple[EditReply, int]:
        """`edit`, then `WAIT replicas timeout_ms`: the reply and how many replicas acknowledged
        every write this connection made. WAIT counts only its own connection's writes, so both
        go in one pipeline (one connection, one round trip). Plain EVALSHA rather than the
        script object, whose pipeline form asks SCRIPT EXISTS first (a round trip more); when
        the server lost the script (NOSCRIPT: nothing ran), it is loaded and the pair retried.
        Not on Redis Cluster (shared/settings.py refuses the setting there)."""
        keys, args = self._edit_call(doc_id, content, base_version, author, now_ms, grants, rate)
        for attempt in range(2):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(self._edit.sha, len(keys), *keys, *args)
                pipe.wait(replicas, timeout_ms)
                try:
                    (status, version, saved), acked = await pipe.execute()
                except NoScriptError:
                    if attempt:
                        raise
                    await self._redis.script_load(self._edit.script)
                    continue
            return EditReply(int(status), int(version), int(saved)), int(acked)
        raise AssertionError("unreachable")

    async def wait_replicas(self, replicas: int, timeout_ms: int) -> int:
        """How many replicas hold every write made so far by anyone (a mark written, then WAIT
        on the same connection): for writes made on other connections (a co-edited
        document's append), which a WAIT of ours would not count."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._keys.replica_mark(), "1", px=60_000)
            pipe.wait(replicas, timeout_ms)
            _, acked = await pipe.execute()
        return int(acked)

    async def seed(self, doc_id: str, fields: Mapping[str, str | int | bytes], ttl_ms: int) -> bool:
        flat: list[str | int | bytes] = []
        for name, value in fields.items():
            flat += (name, value)
        return bool(await self._call("seed", (self._keys.doc(doc_id),), (ttl_ms, *flat)))

    async def claim(
        self, shard: int, token: str, lease_ms: int, limit: int, until_ms: int | None
    ) -> list[str]:
        k = self._keys
        until = "+inf" if until_ms is None else until_ms
        ids: list[str] = await self._call(
            "claim", (k.dirty(shard), k.flush_lease(shard)), (token, lease_ms, limit, until)
        )
        return ids

    async def release(self, shard: int, token: str) -> None:
        await self._call("release", (self._keys.flush_lease(shard),), (token,))

    async def mark_clean(
        self,
        shard: int,
        written: Sequence[tuple[str, int]],
        ttl_ms: int,
        read_ms: int,
        folds: Mapping[str, Fold] | None = None,
    ) -> int:
        keys, args = self._mark_clean_call(shard, written, ttl_ms, read_ms, now_ms(), folds or {})
        return int(await self._call("mark_clean", keys, args))

    def _mark_clean_call(
        self,
        shard: int,
        written: Sequence[tuple[str, int]],
        ttl_ms: int,
        read_ms: int,
        now: int,
        folds: Mapping[str, Fold],
    ) -> tuple[Sequence[str], Sequence[Any]]:
        k = self._keys
        args: list[str | int | bytes] = [ttl_ms, read_ms, now, *self._events]
        keys = [k.dirty(shard)]
        for doc_id, version in written:
            keys += (k.doc(doc_id), k.doc_events(doc_id), k.update_log(doc_id))
            fold = folds.get(doc_id)
            if fold is None:
                args += (doc_id, version, "", "", "", "", "")
            else:
                args += (
                    doc_id,
                    version,
                    fold.folded_id,
                    fold.state,
                    fold.text,
                    fold.folded_bytes,
                    fold.base_id,
                )
        return keys, args

    async def mark_clean_shards(
        self,
        shards: Sequence[tuple[int, Sequence[tuple[str, int]]]],
        ttl_ms: int,
        read_ms: int,
        folds: Mapping[str, Fold] | None = None,
    ) -> int:
        """mark_clean for several shards, keeping `folds` (by document id) as it goes: one call
        a shard slice (SLICE documents, ROUND_BYTES of folds at most), in round trips of
        ROUND_BYTES at most: one round trip unless the folds are large."""
        now = now_ms()
        folds = folds or {}

        def size(doc_id: str) -> int:
            fold = folds.get(doc_id)
            return 0 if fold is None else len(fold.state) + len(fold.text)

        calls, sizes = [], []
        for shard, written in shards:
            for i in range(0, len(written), SLICE):
                part = written[i : i + SLICE]
                for at in rounds(range(len(part)), [size(d) for d, _ in part]):
                    calls.append(
                        self._mark_clean_call(
                            shard, [part[j] for j in at], ttl_ms, read_ms, now, folds
                        )
                    )
                    sizes.append(sum(size(part[j][0]) for j in at))
        cleaned = 0
        for at in rounds(range(len(calls)), sizes):
            cleaned += sum(int(r) for r in await self._many("mark_clean", [calls[j] for j in at]))
        return cleaned

    async def rebase(self, doc_id: str, pg_version: int, written: int) -> int:
        """rebase.lua: move the document's version past `pg_version` if Postgres holds it from
        another history; the new version, or 0 when nothing moved."""
        k = self._keys
        return int(
            await self._call(
                "rebase",
                (k.doc(doc_id), k.doc_dirty(doc_id)),
                (doc_id, pg_version, written, now_ms()),
            )
        )

    async def quarantine_shards(
        self, shards: Sequence[tuple[int, Sequence[tuple[str, int]]]]
    ) -> dict[str, QuarantineStatus]:
        """Move refused (id, version) pairs from each shard's dirty index to its quarantine, each
        only if its version is still the refused one: one call a shard, one round trip."""
        k = self._keys
        now = now_ms()
        calls: list[tuple[Sequence[str], Sequence[Any]]] = []
        for shard, refused in shards:
            args: list[str | int] = [now]
            for doc_id, version in refused:
                args += (doc_id, version)
            calls.append(
                (
                    (k.dirty(shard), k.quarantine(shard), *(k.doc(d) for d, _ in refused)),
                    args,
                )
            )
        replies = await self._many("quarantine", calls)
        out: dict[str, QuarantineStatus] = {}
        for (_, refused), statuses in zip(shards, replies, strict=True):
            for (doc_id, _), status in zip(refused, statuses, strict=True):
                out[doc_id] = QuarantineStatus(int(status))
        return out

    async def _many(
        self, name: str, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
    ) -> list[Any]:
        """Several calls of one script in one round trip (a pipeline). Redis Cluster refuses
        scripts in a pipeline, so there they go concurrently instead, one per call; each call's
        keys share one hash tag either way."""
        return await run_many(self._redis, self._s[name], calls)

    async def delete(self, doc_id: str, tombstone_ttl_ms: int, by: str = "") -> None:
        k = self._keys
        await self._call(
            "delete",
            (
                k.doc(doc_id),
                k.editors(doc_id),
                k.doc_dirty(doc_id),
                k.doc_presence(doc_id),
                k.doc_events(doc_id),
                k.doc_quarantine(doc_id),
                k.update_log(doc_id),
                k.awareness(doc_id),
            ),
            (doc_id, tombstone_ttl_ms, now_ms(), by),
        )

    async def presence_join(
        self, doc_id: str, user_id: str, expiry_ms: int, now_ms: int
    ) -> list[str]:
        k = self._keys
        editors: list[str] = await self._call(
            "presence_join",
            (k.editors(doc_id), k.doc_presence(doc_id), k.doc_events(doc_id)),
            (doc_id, user_id, expiry_ms, now_ms, *self._events),
        )
        return editors

    async def presence_leave(
        self, doc_id: str, user_id: str | None, now_ms: int
    ) -> tuple[bool, list[str]]:
        """Remove the user (or, with None, only expired editors). True when the last one left."""
        k = self._keys
        emptied, *editors = await self._call(
            "presence_leave",
            (k.editors(doc_id), k.doc_presence(doc_id), k.doc_events(doc_id)),
            (doc_id, user_id or "", now_ms, *self._events),
        )
        return bool(emptied), editors

    async def gcra(self, key: str, interval_ms: int, burst: int, now_ms: int) -> RateDecision:
        allowed, remaining, retry_ms, reset_ms = await self._call(
            "gcra", (key,), (interval_ms, burst, now_ms)
        )
        return RateDecision(bool(allowed), int(remaining), int(retry_ms), int(reset_ms))

    # Matcher pool: every key of a call is in one language's pool (one hash tag). ------------
    async def match(
        self,
        language: str,
        user_id: str,
        ticket: str,
        *,
        region: str = "",
        wanted_region: str = "",
        interests: Sequence[str] = (),
        now_ms: int,
        ttl_ms: int,
        scan_limit: int,
        requeue: bool = False,
        prune_limit: int = 32,
        claim_ttl_ms: int = 60_000,
    ) -> MatchReply:
        """Enter the pool as (user_id, ticket) and (scan_limit > 0) claim the best partner,
        atomically. The ticket names one connection: a stale one of the same user can neither
        refresh nor remove a newer one's entry. A ticket a match claimed is refused (CLAIMED)
        unless `requeue`: the claiming match was called off."""
        k = self._keys
        reply = await self._call(
            "match",
            (
                k.pool_members(language),
                k.pool_entries(language),
                *(k.pool_interest(language, slug) for slug in interests),
            ),
            (
                now_ms,
                now_ms + ttl_ms,
                user_id,
                ticket,
                region,
                wanted_region,
                scan_limit,
                prune_limit,
                k.pool_interest_prefix(language),
                k.pool_claimed_prefix(language),
                claim_ttl_ms,
                1 if requeue else 0,
                *interests,
            ),
        )
        status = MatchStatus(reply[0])
        if status is not MatchStatus.MATCHED:
            return MatchReply(status)
        return MatchReply(status, reply[1], reply[2], tuple(reply[3:]))

    async def pool_refresh(
        self, language: str, owners: Sequence[tuple[str, str]], expiry_ms: int
    ) -> list[str]:
        """Extend the entries still owned by these (user, ticket) pairs; the lost users back."""
        k = self._keys
        args: list[str | int] = [expiry_ms, k.pool_claimed_prefix(language)]
        for user_id, ticket in owners:
            args += (user_id, ticket)
        lost: list[str] = await self._call(
            "pool_refresh", (k.pool_members(language), k.pool_entries(language)), args
        )
        return lost

    async def pool_leave(self, language: str, user_id: str, ticket: str) -> bool:
        k = self._keys
        return bool(
            await self._call(
                "pool_leave",
                (k.pool_members(language), k.pool_entries(language)),
                (user_id, ticket, k.pool_interest_prefix(language)),
            )
        )


@dataclass(frozen=True, slots=True)
class CacheAcquire:
    entry: str | None
    leased: bool
    generation: str


class CacheScripts:
    """The cache-aside scripts, registered on the cache Redis (not the state Redis)."""

    NAMES = ("cache_acquire", "cache_fill", "cache_invalidate")

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._keys = keys
        self._s = {name: redis.register_script(lua_source(name)) for name in self.NAMES}

    def _triple(self, family: str, item: str) -> tuple[str, str, str]:
        k = self._keys
        return k.cache_entry(family, item), k.cache_lease(family, item), k.cache_gen(family, item)

    async def acquire(
        self,
        family: str,
        item: str,
        token: str,
        lease_ms: int,
        fresh_gen: str,
        gen_ttl_ms: int,
        *,
        refresh: bool = False,
    ) -> CacheAcquire:
        entry, leased, gen = await self._s["cache_acquire"](
            keys=self._triple(family, item),
            args=(token, lease_ms, fresh_gen, gen_ttl_ms, "1" if refresh else "0"),
        )
        return CacheAcquire(entry, bool(leased), str(gen))

    async def fill(
        self, family: str, item: str, entry: str, ttl_ms: int, gen: str, token: str
    ) -> bool:
        """Store `entry` unless invalidated since `gen` was read ("" only releases the lease)."""
        stored = await self._s["cache_fill"](
            keys=self._triple(family, item),
            args=(entry, ttl_ms, gen, token, self._keys.cache_ready(family, item)),
        )
        return bool(stored)

    async def invalidate(self, family: str, item: str, new_gen: str, gen_ttl_ms: int) -> None:
        await self._s["cache_invalidate"](
            keys=self._triple(family, item),
            args=(new_gen, gen_ttl_ms, self._keys.cache_ready(family, item)),
        )
