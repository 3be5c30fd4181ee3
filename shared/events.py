"""Event streams: the documents' capped streams (most entries are appended by the Lua scripts;
this module appends the rest) and the users' inboxes, and how an entry becomes an `Event` frame.

An inbox (`Keys.inbox`) is short-lived and capped: a result waits there for a user who may be
reconnecting. Match results are stored as field `d` (a `Delivery`, see shared/messages.py);
every other inbox entry is flat fields like a document stream's (`type`, ...).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError
from redis.asyncio import Redis

from shared.keys import Keys
from shared.messages import Delivery, Event
from shared.settings import Settings

INBOX_MAXLEN = 32
JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"

StreamPos = tuple[int, int]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pos(stream_id: str) -> StreamPos:
    """A stream id as a comparable pair ("1700000000000-3" -> (1700000000000, 3)). Only for ids
    from Redis or checked by `shared.messages.stream_id`: int() alone takes "1_0" and digits of
    other scripts, which Redis then refuses."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def to_inbox(
    redis: Redis, keys: Keys, user_id: str, fields: Mapping[str, str], ttl_ms: int
) -> str:
    """Append to the user's inbox, capped and expiring: one round trip. Returns the entry id."""
    key = keys.inbox(user_id)
    pipe = redis.pipeline(transaction=False)
    pipe.xadd(key, cast(Any, dict(fields)), maxlen=INBOX_MAXLEN, approximate=True)
    pipe.pexpire(key, ttl_ms)
    entry_id, _ = await pipe.execute()
    return str(entry_id)


async def job_finished(
    redis: Redis,
    keys: Keys,
    settings: Settings,
    user_id: str,
    job_id: str,
    *,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> str:
    """`job.completed {job_id, status, result}` or, with `error`, `job.failed {job_id, error}`."""
    fields = {"job_id": job_id, "at": str(now_ms())}
    if error is None:
        fields |= {"type": JOB_COMPLETED, "status": "complete", "result": json.dumps(result or {})}
    else:
        fields |= {"type": JOB_FAILED, "status": "failed", "error": error}
    return await to_inbox(redis, keys, user_id, fields, settings.match_inbox_ttl_s * 1000)


async def to_document(
    redis: Redis, keys: Keys, settings: Settings, doc_id: str, fields: Mapping[str, str | int]
) -> str:
    """Append an event the scripts do not (a snapshot) to the document's stream, capped, with
    its idle TTL renewed; atomic (MULTI: both keys are one key)."""
    key = keys.doc_events(doc_id)
    pipe = redis.pipeline(transaction=True)
    entry = {"document_id": doc_id, "at": now_ms(), **fields}
    pipe.xadd(key, cast(Any, entry), maxlen=settings.doc_events_maxlen, approximate=True)
    pipe.pexpire(key, settings.doc_events_ttl_s * 1000)
    entry_id, _ = await pipe.execute()
    return str(entry_id)


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def doc_event(entry_id: str, f: Mapping[str, str]) -> Event:
    editors = f.get("editors")
    return Event(
        stream="doc",
        id=entry_id,
        event=f.get("type", "unknown"),
        document_id=f.get("document_id"),
        version=_int(f.get("version")),
        by=f.get("by") or None,
        at=_int(f.get("at")),
        editors=None if editors is None else [e for e in editors.split(",") if e],
        label=f.get("label"),
        snapshot_id=f.get("snapshot_id"),
    )


def inbox_event(entry_id: str, f: Mapping[str, str]) -> Event | None:
    """None for an entry that is not for the events socket (a requeue note, garbage)."""
    if "d" in f:
        try:
            delivery = Delivery.model_validate_json(f["d"])
        except ValidationError:
            return None
        frame = delivery.frame
        if frame is None:
            return None
        return Event(
            stream="inbox",
            id=entry_id,
            event="match.found",
            document_id=frame.document_id,
            match=frame,
        )
    if "type" not in f:
        return None
    try:
        result = json.loads(f["result"]) if f.get("result") else None
    except ValueError:
        result = None
    return Event(
        stream="inbox",
        id=entry_id,
        event=f["type"],
        job_id=f.get("job_id"),
        status=f.get("status"),
        result=result if isinstance(result, dict) else None,
        error=f.get("error"),
        at=_int(f.get("at")),
        document_id=f.get("document_id"),
    )
