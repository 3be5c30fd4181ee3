"""Documents: the write-behind store. Redis holds the newest state; Postgres catches up through
the flusher. Every access decision for a document is made by `allows` below, and nowhere else
but its mirror in lua/edit.lua (kept there so an edit stays one round trip)."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Awaitable, Mapping, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, cast

import asyncpg
from redis.asyncio import Redis

from shared.domain.accounts import Principal
from shared.domain.coediting import CoEditing
from shared.domain.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
)
from shared.domain.models import (
    DocState,
    DocumentOut,
    DocumentPage,
    DocumentSummary,
    EditOut,
    StatusOut,
)
from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store import queries
from shared.store.keys import Keys
from shared.store.replicas import ReplicaWaits
from shared.store.scripts import Scripts
from shared.store.update_log import AppendStatus


class EditStatus(IntEnum):
    """What became of an edit: the codes of shared/store/lua/edit.lua's reply."""

    APPLIED = 1
    NOT_LOADED = 0  # not in Redis: seed it from Postgres, then retry
    STALE = -1
    DELETED = -2
    NO_ACCESS = -3
    RATE_LIMITED = -4  # the reply's `version` then holds the milliseconds until a retry may succeed
    CO_EDITED = -5  # a Yjs state holds the text: the edit becomes an update (CoEditing.edit)


# The hash fields this module reads (never `ys`, a co-edited document's Yjs state: bytes).
FIELDS = ("v", "sv", "c", "ti", "acl", "by", "at", "ca", "del", "ds", "yb")
# What an access check reads: not the text, which may be megabytes (a collab socket checks at
# open and close, the events socket at each subscribe).
ACCESS_FIELDS = ("v", "acl", "del")


def _dt(ms: str | int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC)


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _state(version: int, saved: int) -> DocState:
    return "saved" if saved >= version else "saving"


def acl_of(tenant_id: str | None, members: Sequence[str]) -> str:
    """The grants that open a document: its tenant's, or each room member's."""
    if tenant_id is not None:
        return f"t:{tenant_id}"
    return " ".join(f"u:{m}" for m in members)


def allows(acl: str, who: Principal) -> bool:
    held = acl.split()
    return any(g in held for g in who.grants)


class Documents:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        db: asyncpg.Pool,
        scripts: Scripts,
        keys: Keys,
        coediting: CoEditing | None = None,
    ) -> None:
        """`coediting` reads and edits co-edited documents' text; without it (the matcher,
        which never reads a document's content) such a read or edit is an error."""
        self._redis = redis
        self._coediting = coediting
        self._db = db
        self._scripts = scripts
        self._keys = keys
        self._max_bytes = settings.max_document_bytes
        self._clean_ttl_ms = settings.clean_ttl_s * 1000
        self._tombstone_ttl_ms = settings.tombstone_ttl_s * 1000
        self._presence_ttl_ms = settings.presence_ttl_s * 1000
        # GCRA per author per document: `edit_rate` edits at once, then one per interval.
        self._edit_rate = (
            max(1, settings.edit_period_s * 1000 // settings.edit_rate),
            settings.edit_rate,
        )
        self._edit_period_s = settings.edit_period_s
        # A co-edited document's edits are Yjs updates, under the append script's rate instead.
        self._collab_rate = settings.collab_update_rate
        # 0: acknowledge on the primary's word (one integer check on the hot path).
        self._min_replicas = settings.edit_min_replicas
        self._replica_timeout_ms = settings.edit_replica_timeout_ms
        # Appends of co-edited documents run on the update log's connections: a mark and a WAIT
        # after them, one round for every append that finished before it.
        self._replica_waits = ReplicaWaits(
            lambda: scripts.wait_replicas(self._min_replicas, self._replica_timeout_ms)
        )

    def _check_size(self, content: str) -> None:
        # Cheap bound first: UTF-8 needs at most 4 bytes a character.
        if len(content) * 4 > self._max_bytes and len(content.encode()) > self._max_bytes:
            raise TooLarge(
                f"content is over the {self._max_bytes}-byte limit", limit=self._max_bytes
            )

    # Loading -------------------------------------------------------------------------------
    async def _fields(self, doc_id: str, names: Sequence[str] = FIELDS) -> dict[str, str] | None:
        """The document's Redis hash (`names` of it, or all of it when loaded from Postgres),
        loading it from Postgres when Redis does not hold it. None when it does not exist (or
        is deleted)."""
        fields = await self._hash(doc_id, names)
        if not fields:
            async with self._db.acquire() as conn:
                row = await queries.document(conn, doc_id)
            if row is None:
                return None
            loaded = self._row_fields(row, row["members"])
            if await self._scripts.seed(doc_id, {**loaded, **_row_state(row)}, self._clean_ttl_ms):
                fields = dict(loaded)
            else:
                # Someone else loaded or edited it meanwhile: theirs is at least as new.
                fields = await self._hash(doc_id)
        if not fields or "del" in fields:
            return None
        return fields

    async def _hash(self, doc_id: str, names: Sequence[str] = FIELDS) -> dict[str, str]:
        # redis-py types its commands as sync-or-async; this client is the async one.
        raw = self._redis.hmget(self._keys.doc(doc_id), list(names))
        values = cast(list[str | None], await cast(Awaitable[Any], raw))
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    @staticmethod
    def _row_fields(row: asyncpg.Record, members: Sequence[object]) -> dict[str, str]:
        """The Redis hash of a Postgres row; `members` are the document's room members."""
        tenant = None if row["tenant_id"] is None else str(row["tenant_id"])
        return {
            "v": str(row["version"]),
            "sv": str(row["version"]),
            "c": row["content"],
            "ti": row["title"],
            "acl": acl_of(tenant, [str(m) for m in members]),
            "by": "" if row["updated_by"] is None else str(row["updated_by"]),
            "at": str(_ms(row["updated_at"])),
            "ca": str(_ms(row["created_at"])),
        }

    async def _visible(self, who: Principal, doc_id: str) -> dict[str, str]:
        fields = await self._fields(doc_id)
        if fields is None or not allows(fields["acl"], who):
            # Same answer for "missing" and "not yours": existence is not leaked.
            raise NotFound(f"document {doc_id} not found")
        return fields

    async def readable(self, who: Principal, doc_id: str) -> bool:
        """May `who` read this document? False for a missing, deleted or malformed id too, so a
        caller can answer both alike (no existence leak)."""
        try:
            uuid.UUID(doc_id)
        except ValueError:
            return False
        fields = await self._fields(doc_id, ACCESS_FIELDS)
        return fields is not None and allows(fields["acl"], who)

    # Commands ------------------------------------------------------------------------------
    async def create(
        self,
        who: Principal,
        title: str,
        content: str,
        *,
        members: Sequence[str] = (),
    ) -> DocumentOut:
        """A tenant document, or with `members`, a room document that only they may open."""
        self._check_size(content)
        doc_id = str(uuid.uuid4())
        tenant = None if members else who.tenant_id
        async with self._db.acquire() as conn, conn.transaction():
            row = await queries.insert_document(conn, doc_id, tenant, title, content, who.user_id)
            added = await queries.add_document_members(conn, doc_id, members) if members else []
        fields = self._row_fields(row, added)
        await self._scripts.seed(doc_id, fields, self._clean_ttl_ms)
        return self._out(doc_id, fields)

    async def read(self, who: Principal, doc_id: str) -> DocumentOut:
        fields = await self._visible(who, doc_id)
        if fields.get("yb", "0") != "0":
            # Co-edited, with updates not folded yet: `c` is the text as of the last fold.
            text = await self._co(doc_id).text(doc_id)
            if text is None:  # evicted between the two reads: load it again
                return await self.read(who, doc_id)
            fields["c"] = text
        return self._out(doc_id, fields)

    def _co(self, doc_id: str) -> CoEditing:
        if self._coediting is None:
            raise RuntimeError(f"document {doc_id} is co-edited: this process has no CoEditing")
        return self._coediting

    async def edit(
        self, who: Principal, doc_id: str, content: str, base_version: int | None
    ) -> EditOut:
        self._check_size(content)
        for _ in range(3):
            call = (doc_id, content, base_version, who.user_id, now_ms(), who.grants)
            if self._min_replicas:
                reply, acked = await self._scripts.edit_replicated(
                    *call, self._edit_rate, self._min_replicas, self._replica_timeout_ms
                )
                if reply.status == EditStatus.APPLIED:
                    self._check_replicas(reply.version, acked)
            else:
                reply = await self._scripts.edit(*call, self._edit_rate)
            status = EditStatus(reply.status)
            if status is EditStatus.CO_EDITED:
                merged = await self._co_edit(
                    who, doc_id, content, base_version, reply.saved_version
                )
                if merged is not None:
                    return merged
                status = EditStatus.NOT_LOADED
            if status is EditStatus.APPLIED:
                return EditOut(
                    id=doc_id,
                    version=reply.version,
                    saved_version=reply.saved_version,
                    status=_state(reply.version, reply.saved_version),
                )
            if status is EditStatus.STALE:
                raise _stale(base_version, reply.version)
            if status is EditStatus.RATE_LIMITED:
                raise self._rate_limited(reply.version)
            if status is not EditStatus.NOT_LOADED:
                break
            # Not in Redis (its clean copy expired): load it from Postgres and try again.
            if await self._fields(doc_id) is None:
                break
        raise NotFound(f"document {doc_id} not found")

    async def replicated(self) -> bool:
        """Whether `REDLINE_EDIT_MIN_REPLICAS` replicas hold every write the caller completed
        (a co-editing socket's append, before its relay acknowledges it); True when none are
        asked for."""
        if not self._min_replicas:
            return True
        return await self._replica_waits.replicas() >= self._min_replicas

    def _check_replicas(self, version: int, acked: int) -> None:
        if acked >= self._min_replicas:
            return
        # Stored on the primary, so a failover could still lose it: no 202. Retrying the same
        # content is safe; with base_version, a 409 whose current_version is this version means
        # the retry found this very edit in place.
        raise Unavailable(
            f"the edit is stored on the primary (version {version}) but only {acked} of"
            f" {self._min_replicas} required replica(s) acknowledged it within"
            f" {self._replica_timeout_ms} ms, so it is not acknowledged; retry the same content"
            f" (with base_version, a 409 at current_version {version} means it is this edit)",
            dependency="redis replica",
        )

    async def _co_edit(
        self, who: Principal, doc_id: str, content: str, base_version: int | None, saved: int
    ) -> EditOut | None:
        """The edit of a co-edited document, as an update; None when it must be loaded first."""
        reply = await self._co(doc_id).edit(who, doc_id, content, base_version, now_ms())
        if reply is None or reply.status in (AppendStatus.NOT_LOADED, AppendStatus.NOT_SEEDED):
            return None
        if reply.status is AppendStatus.APPENDED:
            if self._min_replicas:
                self._check_replicas(reply.version, await self._replica_waits.replicas())
            return EditOut(
                id=doc_id,
                version=reply.version,
                saved_version=saved,
                status=_state(reply.version, saved),
            )
        if reply.status is AppendStatus.STALE:
            raise _stale(base_version, reply.version)
        if reply.status is AppendStatus.RATE_LIMITED:
            raise RateLimited(
                "too many edits of this co-edited document; retry later",
                retry_after_s=max(1, math.ceil(reply.version / 1000)),
                limit=self._collab_rate,
                window_s=1,
                policy="collab",
            )
        if reply.status is AppendStatus.LOG_FULL:
            raise Unavailable(
                "the document is saving a backlog of edits; retry shortly", dependency="postgres"
            )
        if reply.status is AppendStatus.TOO_LARGE:  # not asked for here (the text was measured)
            raise TooLarge(
                f"content is over the {self._max_bytes}-byte limit", limit=self._max_bytes
            )
        raise NotFound(f"document {doc_id} not found")

    def _rate_limited(self, retry_after_ms: int) -> RateLimited:
        return RateLimited(
            "too many edits of this document; retry later",
            retry_after_s=max(1, math.ceil(retry_after_ms / 1000)),
            limit=self._edit_rate[1],
            window_s=self._edit_period_s,
            policy="edit",
        )

    async def delete(self, who: Principal, doc_id: str) -> None:
        if await self._finish_delete(who, doc_id):
            return
        await self._visible(who, doc_id)
        # Tombstone first: from here on no edit, seed or flush can bring the document back.
        await self._scripts.delete(doc_id, self._tombstone_ttl_ms, who.user_id)
        async with self._db.acquire() as conn:
            await queries.delete_document(conn, doc_id)

    async def _finish_delete(self, who: Principal, doc_id: str) -> bool:
        """Finish an earlier DELETE of this document that stored its tombstone but failed before
        deleting its Postgres row (Postgres down: a 503; the process gone): the row would stay
        listed, and come back once the tombstone expires. True when this call deleted the row;
        False when there is no tombstone `who` may open. A tombstone with no row left is a
        document deleted already: not found, as for anyone."""
        fields = await self._hash(doc_id, ACCESS_FIELDS)
        if "del" not in fields or not allows(fields.get("acl", ""), who):
            return False
        async with self._db.acquire() as conn:
            if await queries.delete_document(conn, doc_id):
                return True
        raise NotFound(f"document {doc_id} not found")

    async def page(self, who: Principal, limit: int, cursor: str | None) -> DocumentPage:
        after = _decode_cursor(cursor) if cursor else None
        async with self._db.acquire() as conn:
            rows = await queries.tenant_documents(conn, who.tenant_id, limit + 1, after)
        page, more = rows[:limit], len(rows) > limit
        # Overlay Redis's newer versions so the list reads our own writes too.
        async with self._redis.pipeline(transaction=False) as pipe:
            for row in page:
                pipe.hmget(self._keys.doc(str(row["id"])), ["v", "sv", "at"])
            live = await pipe.execute()
        items = []
        for row, (v, sv, at) in zip(page, live, strict=True):
            version = int(v) if v is not None else row["version"]
            saved = int(sv) if sv is not None else row["version"]
            items.append(
                DocumentSummary(
                    id=str(row["id"]),
                    title=row["title"],
                    version=version,
                    saved_version=saved,
                    status=_state(version, saved),
                    updated_at=_dt(at) or row["updated_at"],
                    created_at=row["created_at"],
                )
            )
        next_cursor = _encode_cursor(page[-1]["created_at"], str(page[-1]["id"])) if more else None
        return DocumentPage(items=items, next_cursor=next_cursor)

    # Presence ------------------------------------------------------------------------------
    async def join(self, who: Principal, doc_id: str) -> list[str]:
        await self._visible(who, doc_id)
        now = now_ms()
        return await self._scripts.presence_join(
            doc_id, who.user_id, now + self._presence_ttl_ms, now
        )

    async def leave(self, who: Principal, doc_id: str) -> tuple[bool, list[str]]:
        """Remove the caller's presence. True when the last editor left: time to flush."""
        await self._visible(who, doc_id)
        return await self._scripts.presence_leave(doc_id, who.user_id, now_ms())

    async def status(self, who: Principal, doc_id: str) -> StatusOut:
        fields = await self._visible(who, doc_id)
        now = now_ms()
        # Live editors: those whose expiry score is still ahead of now.
        editors = await self._redis.zrangebyscore(self._keys.editors(doc_id), now, "+inf")
        version, saved = int(fields["v"]), int(fields["sv"])
        return StatusOut(
            id=doc_id,
            version=version,
            saved_version=saved,
            status=_state(version, saved),
            dirty_since=_dt(fields.get("ds")),
            editors=editors,
        )

    @staticmethod
    def _out(doc_id: str, f: Mapping[str, str]) -> DocumentOut:
        version, saved = int(f["v"]), int(f["sv"])
        updated_at = _dt(f["at"])
        created_at = _dt(f["ca"])
        assert updated_at is not None and created_at is not None
        return DocumentOut(
            id=doc_id,
            title=f["ti"],
            content=f["c"],
            version=version,
            saved_version=saved,
            status=_state(version, saved),
            dirty_since=_dt(f.get("ds")),
            updated_at=updated_at,
            updated_by=f.get("by") or None,
            created_at=created_at,
        )


def _stale(base_version: int | None, version: int) -> Conflict:
    return Conflict(
        f"base_version {base_version} is stale: the document is at version {version}",
        current_version=version,
    )


def _row_state(row: asyncpg.Record) -> dict[str, str | bytes]:
    """A co-edited row's Yjs state for its Redis hash (nothing for any other row): the folded
    state, the last log id in it, and an empty log."""
    state = row.get("ystate")
    if state is None:
        return {}
    return {
        "ys": bytes(state),
        "yl": row.get("ylog") or "0-0",
        "yv": str(row["version"]),
        "yb": "0",
    }


def _encode_cursor(created_at: datetime, doc_id: str) -> str:
    raw = f"{created_at.isoformat()}|{doc_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, doc_id = raw.split("|", 1)
        at = datetime.fromisoformat(stamp)
        if at.tzinfo is None:
            raise ValueError("a cursor's time always carries its offset")
        # In UTC here, as asyncpg would convert it: a stamp at the edge of Python's range
        # (0001-01-01T00:00+14:00, 9999-12-31T23:59:59-14:00) parses but overflows on the way,
        # which was a 500 deep inside the query.
        return at.astimezone(UTC), str(uuid.UUID(doc_id))
    except (ValueError, OverflowError):  # UnicodeDecodeError and binascii.Error are ValueErrors
        raise InvalidInput("cursor is not one this API returned") from None
