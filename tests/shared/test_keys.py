from __future__ import annotations

import re
import uuid

from shared.store.keys import Keys

TAG = re.compile(r"\{([^}]*)\}")


def tag(key: str) -> str:
    match = TAG.search(key)
    assert match is not None, key
    return match.group(1)


def test_a_documents_keys_share_its_shards_hash_tag() -> None:
    keys = Keys("rl", 64)
    for _ in range(200):
        doc_id = str(uuid.uuid4())
        shard = keys.shard_of(doc_id)
        tags = {
            tag(keys.doc(doc_id)),
            tag(keys.editors(doc_id)),
            tag(keys.dirty(shard)),
            tag(keys.presence(shard)),
            tag(keys.flush_lease(shard)),
        }
        assert tags == {f"s{shard}"}


def test_shards_are_stable_and_spread() -> None:
    keys = Keys("rl", 16)
    ids = [str(uuid.UUID(int=i)) for i in range(1600)]
    shards = [keys.shard_of(i) for i in ids]
    assert shards == [Keys("rl", 16).shard_of(i) for i in ids]
    counts = [shards.count(s) for s in range(16)]
    assert min(counts) > 50, counts


def test_every_name_carries_the_prefix() -> None:
    keys = Keys("tenantA", 4)
    names = [
        keys.doc("d"),
        keys.editors("d"),
        keys.dirty(0),
        keys.presence(1),
        keys.flush_lease(2),
        keys.session("h"),
        keys.rate_limit("login", "1.2.3.4"),
        keys.queue_name,
        keys.flush_job_id("d"),
    ]
    assert all(n.startswith("tenantA:") for n in names)
