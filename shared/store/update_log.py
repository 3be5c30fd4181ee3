"""Typed wrappers around the scripts whose replies hold Yjs bytes: a co-edited document's update
log and its seed (shared/store/lua/collab_*.lua), and the flusher's read of a batch
(read_docs.lua: any document, a co-edited one with its state and log). They run on a client
whose replies stay bytes (`redis_client(..., binary=True)`), since a Yjs update is not text;
text fields are decoded here."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError
from redis.typing import EncodableT

from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import (
    SLICE,
    evalsha_pipelined,
    lua_source,
    rounds,
    run_many,
)

NAMES = ("collab_append", "collab_seed", "collab_read", "read_docs")
# A co-edited document's state larger than this is read outside the flush's read script.
INLINE_STATE_MAX = 64 * 1024
# XRANGE's COUNT for a read of a whole log: any log's length is under it (appends stop at a cap).
WHOLE_LOG = 2**31 - 1


class AppendStatus(IntEnum):
    APPENDED = 1
    NOT_LOADED = 0
    STALE = -1  # `version` then holds the current version
    DELETED = -2
    NO_ACCESS = -3
    RATE_LIMITED = -4  # `version` then holds the milliseconds until a retry may succeed
    LOG_FULL = -5  # `version` then holds the log's length
    NOT_SEEDED = -6
    TOO_LARGE = -7  # the document would pass REDLINE_MAX_DOCUMENT_BYTES


class SeedStatus(IntEnum):
    INSTALLED = 1
    ALREADY = 2
    NOT_LOADED = 0
    MOVED = -1
    DELETED = -2


@dataclass(frozen=True, slots=True)
class AppendReply:
    status: AppendStatus
    version: int
    log_id: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A co-edited document as one script saw it: `state` folded up to `folded_id`, then `log`
    (id, update) in order. `version` None: not in Redis; `state` None: not seeded yet."""

    version: int | None
    state: bytes | None
    folded_id: str
    text: str | None
    deleted: bool
    log: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True, slots=True)
class DocRead:
    """One document as the flusher reads it (read_docs.lua). `version` None: not in Redis.
    `snapshot` is set for a co-edited document (then `content` is None: the fold makes the text)."""

    version: int | None
    content: str | None
    by: str | None
    at: str | None
    deleted: bool
    snapshot: Snapshot | None


@dataclass(frozen=True, slots=True)
class LogLimits:
    entries: int
    bytes: int


@dataclass(frozen=True, slots=True)
class AppendOptions:
    """What every append of a process shares: the log's caps, the author's rate, the event
    stream's cap and TTL, and the `document.edited` throttle."""

    limits: LogLimits
    rate: tuple[int, int] | None = None  # (ms per update, burst); None: no limit
    events_maxlen: int = 1000
    events_ttl_ms: int = 86_400_000
    edited_every_ms: int = 250
    max_document_bytes: int = 1_048_576  # for the appends that ask for the cap (`capped`)


def append_options(settings: Settings) -> AppendOptions:
    rate = settings.collab_update_rate
    return AppendOptions(
        LogLimits(settings.collab_log_max_entries, settings.collab_log_max_bytes),
        rate=(max(1, 1000 // rate), rate),
        events_maxlen=settings.doc_events_maxlen,
        events_ttl_ms=settings.doc_events_ttl_s * 1000,
        max_document_bytes=settings.max_document_bytes,
    )


class UpdateLog:
    def __init__(self, redis: Redis, keys: Keys, options: AppendOptions) -> None:
        self._redis = redis
        self._keys = keys
        self._options = options
        self._s = {name: redis.register_script(lua_source(name)) for name in NAMES}
        o = options
        interval, burst = o.rate or (0, 0)
        # The arguments every append of the process shares, encoded once (ARGV[6..12]).
        self._limits = tuple(
            str(n).encode()
            for n in (
                o.limits.entries,
                o.limits.bytes,
                interval,
                burst,
                o.events_maxlen,
                o.events_ttl_ms,
                o.edited_every_ms,
            )
        )
        self._max_document_bytes = str(o.max_document_bytes).encode()
        self._doc_keys: dict[str, tuple[bytes, ...]] = {}
        # Appends issued in one turn of the event loop (sockets whose keystrokes arrived
        # together) go to Redis as one pipeline: one write and one read for all of them, and
        # none of redis-py's per-command round of pool, retry and timeout. Plain Redis only: a
        # cluster's commands are one call each (their slots may be on different nodes).
        self._batching = not isinstance(redis, RedisCluster)
        self._batch: list[tuple[tuple[EncodableT, ...], asyncio.Future[Any]]] | None = None

    async def append(
        self,
        doc_id: str,
        update: bytes,
        origin: str,
        author: str,
        now_ms: int,
        grants: Sequence[str],
        base_version: int | None = None,
        own_relay: str | None = None,
        *,
        capped: bool = False,
    ) -> AppendReply:
        """Each call is its own script run with its own reply, batched or not: an update is in
        the log when its call returns APPENDED, whatever became of the others.

        `own_relay`: the control channel of the caller's process (`Rooms.control`), which holds
        the document's channel and relays the update to its own sockets itself; the script then
        publishes it only when another process listens too. Plain Redis only: a cluster's
        PUBSUB NUMSUB counts one node's subscribers.

        `capped`: refuse (TOO_LARGE) an update that could take the document past its size cap,
        counting its text as last folded and every update since (a socket's append; an HTTP
        edit measured its whole new text already)."""
        doc, dirty, log, events, quarantine, channel = self._doc_keys.get(
            doc_id
        ) or self._doc_keys_of(doc_id)
        args: tuple[EncodableT, ...] = (
            doc,
            dirty,
            log,
            self._keys.edit_rate(doc_id, author),
            events,
            quarantine,
            doc_id,
            update,
            origin,
            author,
            now_ms,
            *self._limits,
            channel,
            b"" if base_version is None else base_version,
            own_relay if own_relay is not None and self._batching else b"",  # plain Redis
            self._max_document_bytes if capped else b"",
            *grants,
        )
        status, version, log_id = await self._run_append(args)
        return AppendReply(AppendStatus(int(status)), int(version), _text(log_id))

    def _doc_keys_of(self, doc_id: str) -> tuple[bytes, ...]:
        """A document's keys but the author's rate key, and its relay channel, built once."""
        if len(self._doc_keys) >= 10_000:
            self._doc_keys.clear()  # a bound, not an LRU: rebuilding them is cheap
        k = self._keys
        names = (
            k.doc(doc_id),
            k.doc_dirty(doc_id),
            k.update_log(doc_id),
            k.doc_events(doc_id),
            k.doc_quarantine(doc_id),
            k.collab_channel(doc_id),
        )
        built = self._doc_keys[doc_id] = tuple(n.encode() for n in names)
        return built

    async def _run_append(self, args: tuple[EncodableT, ...]) -> Any:
        if not self._batching:
            return await self._one(args)
        if self._batch is not None:  # another append of this turn leads a batch: join it
            joined: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._batch.append((args, joined))
            return await joined
        # The leader's own reply is its call's: no future (nor loop lookup) for it.
        batch: list[tuple[tuple[EncodableT, ...], asyncio.Future[Any]]] = []
        self._batch = batch
        try:
            await asyncio.sleep(0)  # the rest of this turn's ready sockets join the batch
            self._batch = None
            if not batch:
                return await self._one(args)
            replies = await self._pipelined([args, *(a for a, _ in batch)])
        except BaseException as exc:  # Redis down, or this task cancelled: none is known done
            if self._batch is batch:
                self._batch = None
            failed = exc if isinstance(exc, Exception) else ConnectionError("append cancelled")
            for _, joined in batch:
                if not joined.done():
                    joined.set_exception(failed)
            raise
        for (_, joined), reply in zip(batch, replies[1:], strict=True):
            if joined.done():
                continue  # its socket went away meanwhile
            if isinstance(reply, Exception):
                joined.set_exception(reply)
            else:
                joined.set_result(reply)
        if isinstance(replies[0], Exception):
            raise replies[0]
        return replies[0]

    async def _one(self, args: tuple[EncodableT, ...]) -> Any:
        # EVALSHA as redis-py's Script runs it (numkeys 6), minus its per-call tuple building.
        script, run = self._s["collab_append"], self._redis.execute_command
        try:
            return await run("EVALSHA", script.sha, 6, *args)  # type: ignore[no-untyped-call]
        except NoScriptError:  # a restarted server: load the script, run it (it had not run)
            script.sha = await self._redis.script_load(script.script)
            return await run("EVALSHA", script.sha, 6, *args)  # type: ignore[no-untyped-call]

    async def _pipelined(self, calls: list[tuple[EncodableT, ...]]) -> list[Any]:
        """Every call's reply (or its error), in order, from one pipeline."""
        return await evalsha_pipelined(
            self._redis, self._s["collab_append"], [(6, *a) for a in calls]
        )

    async def seed(self, doc_id: str, update: bytes, version: int) -> SeedStatus:
        status = await self._s["collab_seed"](
            keys=(self._keys.doc(doc_id),), args=(update, version)
        )
        return SeedStatus(int(status))

    async def read(self, doc_id: str, max_entries: int) -> Snapshot:
        """The document's snapshot with its whole log. One entry past `max_entries` is asked
        for: a longer log (appended by an api process with a larger
        REDLINE_COLLAB_LOG_MAX_ENTRIES) is read again whole, in one call, so that a GET, an
        HTTP edit's diff or a socket's step 1 never takes part of the log for all of it."""
        k = self._keys
        keys = (k.doc(doc_id), k.update_log(doc_id))
        (reply,) = await self._s["collab_read"](keys=keys, args=(max_entries + 1,))
        snapshot = _snapshot(reply)
        if len(snapshot.log) > max_entries:
            (reply,) = await self._s["collab_read"](keys=keys, args=(WHOLE_LOG,))
            snapshot = _snapshot(reply)
        return snapshot

    async def read_docs(self, groups: Sequence[Sequence[str]], max_entries: int) -> list[DocRead]:
        """Each document of a flush batch, for groups of ids that each lie in one shard: one
        script call a slice of SLICE, all in one round trip. In the order of the ids.

        A co-edited document whose state is over INLINE_STATE_MAX comes back from the script as
        its size only and is read again with plain commands in MULTI/EXEC (atomic: its fields,
        state and log agree), in round trips of at most ROUND_BYTES: Redis then ships the
        stored value as it is, where a script copies it twice, holding every append up for
        about 1 ms per 512 KB (plain Redis; on a cluster the script reads every state)."""
        k = self._keys
        inline = 2**62 if isinstance(self._redis, RedisCluster) else INLINE_STATE_MAX
        calls = [
            (
                [key for d in ids[i : i + SLICE] for key in (k.doc(d), k.update_log(d))],
                (max_entries, inline),
            )
            for ids in groups
            for i in range(0, len(ids), SLICE)
        ]
        replies: list[Sequence[Any]] = []
        for flat in await run_many(self._redis, self._s["read_docs"], calls):
            replies.extend(flat[j : j + 8] for j in range(0, len(flat), 8))
        ids = [d for group in groups for d in group]
        large = [i for i, r in enumerate(replies) if isinstance(r[5], int)]
        for at in rounds(large, [replies[i][5] for i in large]):
            plain = await self._read_plain([ids[i] for i in at], max_entries)
            for i, reply in zip(at, plain, strict=True):
                replies[i] = reply
        return [_doc_read(r) for r in replies]

    async def _read_plain(self, doc_ids: Sequence[str], max_entries: int) -> list[list[Any]]:
        """read_docs.lua's reply for each of `doc_ids` (co-edited documents: the script saw
        their `yb`), from plain commands in one MULTI/EXEC. Their text is not read: the fold
        makes it. (A document no longer co-edited, which a flush never meets, reads as one
        without content: it stays dirty for the next flush's script read.)"""
        k = self._keys
        pipe = self._redis.pipeline(transaction=True)
        for doc_id in doc_ids:
            pipe.hmget(k.doc(doc_id), ["v", "by", "at", "del", "ys", "yl", "yb"])
            # From the log's start: the script that sets `yl` trims every entry up to it, so
            # what is there is after it (filtered below all the same, as the script's range).
            pipe.xrange(k.update_log(doc_id), "-", "+", count=max_entries)
        replies = await pipe.execute()
        out: list[list[Any]] = []
        for n in range(len(doc_ids)):
            (v, by, at, deleted, ys, yl, yb), entries = replies[2 * n], replies[2 * n + 1]
            tail: list[Any] = []
            if yb is None:
                ys = yl = None
            else:
                yl = yl or b"0-0"
                if v is not None and ys is not None:
                    after = _id_key(_text(yl))
                    for entry_id, fields in entries:
                        if _id_key(_text(entry_id)) > after:
                            tail += (entry_id, fields.get(b"u", b""))
            out.append([v, None, by, at, deleted, ys, yl, tail])
        return out


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _doc_read(reply: Sequence[Any]) -> DocRead:
    v, c, by, at, deleted, ys, yl, tail = reply
    version = None if v is None else int(v)
    snapshot = None
    if yl is not None:  # co-edited
        log = tuple((_text(tail[i]), bytes(tail[i + 1])) for i in range(0, len(tail), 2))
        state = None if ys is None else bytes(ys)
        snapshot = Snapshot(version, state, _text(yl), None, deleted is not None, log)
    return DocRead(
        version=version,
        content=None if c is None else _text(c),
        by=None if by is None else _text(by),
        at=None if at is None else _text(at),
        deleted=deleted is not None,
        snapshot=snapshot,
    )


def _snapshot(reply: Sequence[Any]) -> Snapshot:
    version, state, folded, text, deleted, tail = reply
    log = tuple((_text(tail[i]), bytes(tail[i + 1])) for i in range(0, len(tail), 2))
    return Snapshot(
        version=None if version is None else int(version),
        state=None if state is None else bytes(state),
        folded_id=_text(folded),
        text=None if text is None else _text(text),
        deleted=deleted is not None,
        log=log,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
