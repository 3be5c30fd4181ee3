"""Event streams: the documents' capped streams (most entries are appended by the Lua scripts;
this module appends the rest) and the users' inboxes. How an entry becomes an `Event` frame is
the matcher's (services/matcher/messages.py), the only reader.

An inbox (`Keys.inbox`) is short-lived and capped: a result waits there for a user who may be
reconnecting. Match results are stored as field `d` (a `Delivery`, see
services/matcher/messages.py); every other inbox entry is flat fields like a document stream's
(`type`, ...).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

from redis.asyncio import Redis

from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store.keys import Keys

INBOX_MAXLEN = 32
JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"


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
