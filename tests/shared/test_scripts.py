"""The Lua scripts against a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from shared.domain.documents import EditStatus
from shared.store.keys import Keys
from shared.store.scripts import QuarantineStatus, Scripts

TTL = 60_000
GRANTS = ("t:tenant-a", "u:alice")


@pytest.fixture
async def scripts(redis: Redis, keys: Keys) -> AsyncIterator[Scripts]:
    yield Scripts(redis, keys)


async def seeded(scripts: Scripts, acl: str = "t:tenant-a", version: int = 0) -> str:
    doc_id = str(uuid.uuid4())
    fields: dict[str, str | int] = {
        "v": version,
        "sv": version,
        "c": "",
        "ti": "t",
        "acl": acl,
        "at": 1,
        "ca": 1,
    }
    assert await scripts.seed(doc_id, fields, TTL)
    return doc_id


async def test_edit_bumps_version_marks_dirty_and_removes_ttl(
    scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    doc_id = await seeded(scripts)
    assert await redis.pttl(keys.doc(doc_id)) > 0
    reply = await scripts.edit(doc_id, "a", None, "alice", 1000, GRANTS)
    assert (reply.status, reply.version, reply.saved_version) == (EditStatus.APPLIED, 1, 0)
    assert await redis.pttl(keys.doc(doc_id)) == -1, "dirty state must never expire"
    assert await redis.zscore(keys.doc_dirty(doc_id), doc_id) == 1000
    # A second edit keeps the first-dirty time.
    await scripts.edit(doc_id, "ab", None, "alice", 2000, GRANTS)
    assert await redis.zscore(keys.doc_dirty(doc_id), doc_id) == 1000
    assert await redis.hget(keys.doc(doc_id), "ds") == "1000"


async def test_edit_outcomes(scripts: Scripts) -> None:
    missing = str(uuid.uuid4())
    assert (
        await scripts.edit(missing, "x", None, "alice", 1, GRANTS)
    ).status == EditStatus.NOT_LOADED
    doc_id = await seeded(scripts, version=4)
    stale = await scripts.edit(doc_id, "x", 3, "alice", 1, GRANTS)
    assert (stale.status, stale.version) == (EditStatus.STALE, 4)
    assert (await scripts.edit(doc_id, "x", 4, "alice", 1, GRANTS)).version == 5
    other = await scripts.edit(doc_id, "x", None, "mallory", 1, ("t:tenant-b", "u:mallory"))
    assert other.status == EditStatus.NO_ACCESS
    await scripts.delete(doc_id, TTL)
    assert (await scripts.edit(doc_id, "x", None, "alice", 1, GRANTS)).status == EditStatus.DELETED


async def test_room_documents_open_to_members_only(scripts: Scripts) -> None:
    doc_id = await seeded(scripts, acl="u:alice u:bob")
    assert (
        await scripts.edit(doc_id, "x", None, "bob", 1, ("t:x", "u:bob"))
    ).status == EditStatus.APPLIED
    denied = await scripts.edit(doc_id, "x", None, "al", 1, ("t:x", "u:al"))
    assert denied.status == EditStatus.NO_ACCESS, "a prefix of a member id is not a member"


async def test_seed_never_overwrites(scripts: Scripts, redis: Redis, keys: Keys) -> None:
    doc_id = await seeded(scripts)
    await scripts.edit(doc_id, "newer", None, "alice", 1, GRANTS)
    fields: dict[str, str | int] = {
        "v": 0,
        "sv": 0,
        "c": "older",
        "ti": "t",
        "acl": "t:tenant-a",
        "at": 1,
        "ca": 1,
    }
    assert not await scripts.seed(doc_id, fields, TTL)
    assert await redis.hget(keys.doc(doc_id), "c") == "newer"
    await scripts.delete(doc_id, TTL)
    assert not await scripts.seed(doc_id, fields, TTL), "a tombstone blocks resurrection"


async def test_mark_clean_compares_on_version(scripts: Scripts, redis: Redis, keys: Keys) -> None:
    doc_id = await seeded(scripts)
    shard = keys.shard_of(doc_id)
    await scripts.edit(doc_id, "v1", None, "alice", 1, GRANTS)
    await scripts.edit(doc_id, "v2", None, "alice", 2, GRANTS)
    # A flush that wrote version 1 must not clear the mark of version 2...
    assert await scripts.mark_clean(shard, [(doc_id, 1)], TTL, 1500) == 0
    # still dirty, now dated from the flush's read: its unsaved change is newer than that
    assert await redis.zscore(keys.dirty(shard), doc_id) == 1500
    assert await redis.hget(keys.doc(doc_id), "ds") == "1500"
    assert await redis.hget(keys.doc(doc_id), "sv") == "1"
    assert await redis.pttl(keys.doc(doc_id)) == -1
    # ...and one that wrote version 2 does, and gives the clean entry a TTL.
    assert await scripts.mark_clean(shard, [(doc_id, 2)], TTL, 3000) == 1
    assert await redis.zscore(keys.dirty(shard), doc_id) is None
    assert await redis.hget(keys.doc(doc_id), "ds") is None
    assert 0 < await redis.pttl(keys.doc(doc_id)) <= TTL
    # saved_version never moves backwards.
    await scripts.mark_clean(shard, [(doc_id, 1)], TTL, 4000)
    assert await redis.hget(keys.doc(doc_id), "sv") == "2"


async def test_claim_lease_keeps_other_flushers_off_a_shard(
    scripts: Scripts, keys: Keys, redis: Redis
) -> None:
    doc_id = await seeded(scripts)
    shard = keys.shard_of(doc_id)
    await scripts.edit(doc_id, "x", None, "alice", 5, GRANTS)
    assert await scripts.claim(shard, "me", 10_000, 10, None) == [doc_id]
    assert await scripts.claim(shard, "other", 10_000, 10, None) == []
    await scripts.release(shard, "other")  # not theirs to release
    assert await scripts.claim(shard, "other", 10_000, 10, None) == []
    await scripts.release(shard, "me")
    assert await scripts.claim(shard, "other", 10_000, 10, None) == [doc_id]
    # Nothing dirty before the cut-off: no lease is held on the shard, not even one's own.
    assert await scripts.claim(shard, "other", 10_000, 10, 4) == [], "dirty after the cut-off"
    assert await redis.get(keys.flush_lease(shard)) is None


async def test_presence_join_leave_and_expiry(scripts: Scripts) -> None:
    doc_id = await seeded(scripts)
    assert await scripts.presence_join(doc_id, "alice", 10_000, 0) == ["alice"]
    assert sorted(await scripts.presence_join(doc_id, "bob", 20_000, 0)) == ["alice", "bob"]
    emptied, left = await scripts.presence_leave(doc_id, "alice", 1)
    assert (emptied, left) == (False, ["bob"])
    # A sweep before bob's expiry changes nothing; after it, the document is emptied once.
    assert await scripts.presence_leave(doc_id, None, 19_999) == (False, ["bob"])
    assert await scripts.presence_leave(doc_id, None, 20_001) == (True, [])
    assert await scripts.presence_leave(doc_id, None, 20_002) == (False, [])


async def test_gcra_allows_burst_then_spaces_requests(scripts: Scripts) -> None:
    key = "rlt:ratelimit:test:subject"
    interval, burst = 1000, 3
    decisions = [await scripts.gcra(key, interval, burst, 0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert decisions[3].retry_after_ms == 1000
    assert not (await scripts.gcra(key, interval, burst, 999)).allowed
    assert (await scripts.gcra(key, interval, burst, 1000)).allowed
    # After a full window the whole burst is available again.
    refilled = [await scripts.gcra(key, interval, burst, 10_000) for _ in range(3)]
    assert all(d.allowed for d in refilled)


async def test_quarantine_moves_only_the_refused_version(
    scripts: Scripts, redis: Redis, keys: Keys
) -> None:
    refused, edited, gone = [await seeded(scripts) for _ in range(3)]
    for doc_id in (refused, edited, gone):
        await scripts.edit(doc_id, "x", None, "alice", 1000, GRANTS)
    await scripts.edit(edited, "newer", None, "alice", 2000, GRANTS)  # v2 after a read at v1
    await scripts.delete(gone, TTL)
    calls = [(keys.shard_of(d), [(d, 1)]) for d in (refused, edited, gone)]
    assert await scripts.quarantine_shards(calls) == {
        refused: QuarantineStatus.QUARANTINED,
        edited: QuarantineStatus.EDITED,
        gone: QuarantineStatus.GONE,
    }
    assert await redis.zscore(keys.doc_dirty(refused), refused) is None
    assert await redis.zscore(keys.doc_quarantine(refused), refused) is not None
    assert await redis.zscore(keys.doc_dirty(edited), edited) == 1000, "kept, first-dirty time too"
    assert await redis.zscore(keys.doc_quarantine(edited), edited) is None
    first = await redis.zscore(keys.doc_quarantine(refused), refused)
    again = await scripts.quarantine_shards([(keys.shard_of(refused), [(refused, 1)])])
    assert again == {refused: QuarantineStatus.ALREADY}
    assert await redis.zscore(keys.doc_quarantine(refused), refused) == first
    # An applied edit takes it out and marks it dirty again.
    await scripts.edit(refused, "fixed", None, "alice", 3000, GRANTS)
    assert await redis.zscore(keys.doc_quarantine(refused), refused) is None
    assert await redis.zscore(keys.doc_dirty(refused), refused) == 3000
