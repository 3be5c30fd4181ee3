"""The matcher's event reader on a real Valkey cluster: streams of several slots (documents of
different shards, an inbox) are read by per-slot XREADs, since a multi-key XREAD must stay in
one slot there."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import cast

from pydantic import BaseModel
from redis.asyncio import Redis
from redis.crc import key_slot

from services.matcher.connection import Connection
from services.matcher.streams import StreamReader
from shared.settings import Settings
from shared.store.keys import Keys


class Collector:
    """Stands in for a socket's outbox: the frames pushed to it."""

    def __init__(self) -> None:
        self.frames: list[BaseModel] = []

    def push(self, message: BaseModel, inbox_id: str | None = None) -> bool:
        self.frames.append(message)
        return True


async def test_streams_of_different_slots_are_all_delivered(
    settings: Settings, redis: Redis, keys: Keys
) -> None:
    docs = [str(uuid.uuid4()) for _ in range(6)]
    streams = [keys.doc_events(d) for d in docs]
    inbox = keys.inbox("someone")
    assert len({key_slot(k.encode()) for k in [*streams, inbox]}) > 1
    reader = StreamReader(settings.state_url, keys, cluster=True)
    await reader.start()
    sink = Collector()
    conn = cast(Connection, sink)
    try:
        for key in streams:
            reader.start_at(key, reader.follow(key, conn, "doc"), "0-0")
        reader.start_at(inbox, reader.follow(inbox, conn, "inbox"), "0-0")
        for doc_id, key in zip(docs, streams, strict=True):
            await redis.xadd(key, {"type": "document.edited", "document_id": doc_id, "version": 1})
        await redis.xadd(inbox, {"type": "job.completed", "job_id": "j1", "status": "complete"})
        deadline = time.monotonic() + 5
        while len(sink.frames) < len(docs) + 1:
            assert time.monotonic() < deadline, sink.frames
            await asyncio.sleep(0.05)
        got = [f.model_dump() for f in sink.frames]
        assert sorted(f["document_id"] for f in got if f["stream"] == "doc") == sorted(docs)
        assert [f["job_id"] for f in got if f["stream"] == "inbox"] == ["j1"]
    finally:
        await reader.stop()
