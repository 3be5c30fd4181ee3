"""The scripts on the bytes client (collab_append, collab_seed, collab_read, read_docs) and the
fold mark_clean keeps, against a real Redis: an update is in the log before its append returns,
caps push back instead of dropping, a kept fold trims only what it holds, and a retried or stale
fold changes nothing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from shared.domain import collab
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Fold, Scripts, rounds
from shared.store.update_log import (
    INLINE_STATE_MAX,
    AppendOptions,
    AppendStatus,
    LogLimits,
    SeedStatus,
    Snapshot,
    UpdateLog,
)

TTL = 60_000
GRANTS = ("t:tenant-a", "u:alice")
OPTIONS = AppendOptions(LogLimits(entries=50, bytes=4096))


@pytest.fixture
def log(binary: Redis, keys: Keys) -> UpdateLog:
    return UpdateLog(binary, keys, OPTIONS)


async def loaded(redis: Redis, keys: Keys, content: str = "seed text", version: int = 3) -> str:
    """A document as seed.lua loads it from Postgres (tenant-a's, clean)."""
    doc_id = str(uuid.uuid4())
    fields: dict[str, str | int] = {"v": version, "sv": version, "c": content, "acl": "t:tenant-a"}
    assert await Scripts(redis, keys).seed(doc_id, fields, TTL)
    return doc_id


async def co_edited(redis: Redis, keys: Keys, log: UpdateLog, content: str = "seed text") -> str:
    doc_id = await loaded(redis, keys, content)
    assert await log.seed(doc_id, collab.seed_update(content), 3) == SeedStatus.INSTALLED
    return doc_id


def keystrokes(base: bytes, text: str) -> list[bytes]:
    """One update a character, typed at the end of the document `base` holds."""
    doc, body = collab.new_doc(base)
    out = []
    for char in text:
        before = doc.get_state()
        body += char
        out.append(doc.get_update(before))
    return out


async def test_an_appended_update_is_in_the_log_and_the_document_is_dirty(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    doc_id = await co_edited(redis, keys, log)
    (update,) = keystrokes(collab.seed_update("seed text"), "!")
    reply = await log.append(doc_id, update, "p1:s1", "alice", 5000, GRANTS)
    assert reply.status == AppendStatus.APPENDED
    assert reply.version == 4
    assert await redis.zscore(keys.doc_dirty(doc_id), doc_id) == 5000
    assert await redis.pttl(keys.doc(doc_id)) == -1, "dirty state must never expire"
    snap = await log.read(doc_id, 100)
    assert snap.log == ((reply.log_id, update),)
    assert snap.version == 4 and snap.folded_id == "0-0" and not snap.deleted
    assert collab.fold(snap.state, [u for _, u in snap.log]).text == "seed text!"


async def test_append_refusals(redis: Redis, keys: Keys, log: UpdateLog) -> None:
    (update,) = keystrokes(collab.EMPTY_UPDATE, "x")
    missing = str(uuid.uuid4())
    assert (await log.append(missing, update, "o", "alice", 1, GRANTS)).status == (
        AppendStatus.NOT_LOADED
    )
    unseeded = await loaded(redis, keys)
    assert (await log.append(unseeded, update, "o", "alice", 1, GRANTS)).status == (
        AppendStatus.NOT_SEEDED
    )
    doc_id = await co_edited(redis, keys, log)
    other_tenant = ("t:tenant-b", "u:mallory")
    assert (await log.append(doc_id, update, "o", "mallory", 1, other_tenant)).status == (
        AppendStatus.NO_ACCESS
    )
    await redis.hset(keys.doc(doc_id), "del", "1")
    assert (await log.append(doc_id, update, "o", "alice", 1, GRANTS)).status == (
        AppendStatus.DELETED
    )
    # Nothing refused entered a log.
    for refused in (unseeded, doc_id):
        assert await redis.xlen(keys.update_log(refused)) == 0


async def test_appends_of_one_turn_each_get_their_own_reply(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    """Appends issued together go to Redis as one pipeline; each is still its own script run:
    a refusal among them refuses that one alone, and every appended one is in its log."""
    first, second = await co_edited(redis, keys, log), await co_edited(redis, keys, log)
    typed = keystrokes(collab.seed_update("seed text"), "abc")
    other_tenant = ("t:tenant-b", "u:mallory")
    replies = await asyncio.gather(
        log.append(first, typed[0], "p:1", "alice", 1, GRANTS),
        log.append(second, typed[0], "p:2", "alice", 1, GRANTS),
        log.append(first, typed[1], "p:1", "alice", 2, GRANTS),
        log.append(str(uuid.uuid4()), typed[0], "p:3", "alice", 1, GRANTS),
        log.append(first, typed[2], "p:4", "mallory", 3, other_tenant),
        log.append(first, typed[2], "p:1", "alice", 3, GRANTS),
    )
    assert [(r.status, r.version) for r in replies] == [
        (AppendStatus.APPENDED, 4),
        (AppendStatus.APPENDED, 4),
        (AppendStatus.APPENDED, 5),
        (AppendStatus.NOT_LOADED, 0),
        (AppendStatus.NO_ACCESS, 0),
        (AppendStatus.APPENDED, 6),
    ]
    snap = await log.read(first, 100)
    assert snap.log == tuple((replies[i].log_id, typed[j]) for i, j in ((0, 0), (2, 1), (5, 2)))
    assert collab.fold(snap.state, [u for _, u in snap.log]).text == "seed textabc"
    assert (await log.read(second, 100)).log == ((replies[1].log_id, typed[0]),)


async def test_appends_run_again_after_the_server_lost_its_scripts(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    doc_id = await co_edited(redis, keys, log)
    seed = collab.seed_update("seed text")
    typed = keystrokes(seed, "ab")
    await redis.script_flush()  # as a restarted server has no scripts
    replies = await asyncio.gather(
        *(log.append(doc_id, u, "p:1", "alice", 1, GRANTS) for u in typed)
    )
    assert [r.status for r in replies] == [AppendStatus.APPENDED] * 2
    await redis.script_flush()
    (alone,) = keystrokes(collab.fold(seed, typed).state, "c")  # one call, no batch
    assert (await log.append(doc_id, alone, "p:1", "alice", 1, GRANTS)).status == (
        AppendStatus.APPENDED
    )
    assert len((await log.read(doc_id, 100)).log) == 3


async def test_a_cancelled_append_leaves_the_rest_of_its_batch_alone(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    doc_id = await co_edited(redis, keys, log)
    typed = keystrokes(collab.seed_update("seed text"), "abc")
    tasks = [asyncio.create_task(log.append(doc_id, u, "p:1", "alice", 1, GRANTS)) for u in typed]
    await asyncio.sleep(0)  # all three are in the batch now; the second's socket goes away
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert [r.status for r in (done[0], done[2])] == [AppendStatus.APPENDED] * 2  # type: ignore[union-attr]
    # The cancelled one still went with the batch (appended, never relayed: its client's resync
    # finds it there).
    assert len((await log.read(doc_id, 100)).log) == 3


async def test_a_cancelled_batch_leader_fails_its_batch_and_appends_nothing(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    doc_id = await co_edited(redis, keys, log)
    typed = keystrokes(collab.seed_update("seed text"), "abc")
    tasks = [asyncio.create_task(log.append(doc_id, u, "p:1", "alice", 1, GRANTS)) for u in typed]
    await asyncio.sleep(0)  # the first leads, the others joined it; it has sent nothing yet
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    # A connection error: their sockets close 1013 and resync; none was relayed or appended.
    assert all(isinstance(d, ConnectionError) for d in done[1:]), done
    assert (await log.read(doc_id, 100)).log == ()


async def test_a_full_log_pushes_back_and_keeps_everything(
    redis: Redis, keys: Keys, binary: Redis
) -> None:
    small = UpdateLog(binary, keys, AppendOptions(LogLimits(entries=5, bytes=10_000)))
    doc_id = await co_edited(redis, keys, small)
    updates = keystrokes(collab.seed_update("seed text"), "abcdefg")
    statuses = [(await small.append(doc_id, u, "o", "alice", 1, GRANTS)).status for u in updates]
    assert statuses == [AppendStatus.APPENDED] * 5 + [AppendStatus.LOG_FULL] * 2
    assert await redis.xlen(keys.update_log(doc_id)) == 5
    assert await redis.hget(keys.doc(doc_id), "v") == "8"
    # The byte cap too: one update over what is left is refused whole.
    tight = UpdateLog(binary, keys, AppendOptions(LogLimits(entries=100, bytes=40)))
    other = await co_edited(redis, keys, tight)
    sizes = [len(u) for u in updates]
    fits = next(i for i in range(len(sizes) + 1) if sum(sizes[: i + 1]) > 40)
    replies = [await tight.append(other, u, "o", "alice", 1, GRANTS) for u in updates]
    assert [r.status for r in replies].count(AppendStatus.APPENDED) == fits
    assert replies[fits].status == AppendStatus.LOG_FULL


async def test_the_rate_limit_refuses_without_consuming(
    redis: Redis, keys: Keys, binary: Redis
) -> None:
    limited = UpdateLog(
        binary, keys, AppendOptions(LogLimits(entries=100, bytes=10_000), rate=(100, 2))
    )
    doc_id = await co_edited(redis, keys, limited)
    updates = keystrokes(collab.seed_update("seed text"), "abc")
    replies = [await limited.append(doc_id, u, "o", "alice", 10_000, GRANTS) for u in updates]
    # A burst of two at once, then one every 100 ms.
    assert [r.status for r in replies[:2]] == [AppendStatus.APPENDED] * 2
    assert (replies[2].status, replies[2].version) == (AppendStatus.RATE_LIMITED, 100)
    assert await redis.xlen(keys.update_log(doc_id)) == 2
    later = await limited.append(doc_id, updates[2], "o", "alice", 10_100, GRANTS)
    assert later.status == AppendStatus.APPENDED


async def test_seed_only_from_the_version_it_was_built_from(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    doc_id = await loaded(redis, keys, "first text", version=3)
    stale = collab.seed_update("an older text")
    assert await log.seed(doc_id, stale, 2) == SeedStatus.MOVED
    assert await log.seed(doc_id, collab.seed_update("first text"), 3) == SeedStatus.INSTALLED
    assert await log.seed(doc_id, collab.seed_update("first text"), 3) == SeedStatus.ALREADY
    assert await log.seed(str(uuid.uuid4()), stale, 0) == SeedStatus.NOT_LOADED


async def test_two_processes_seeding_at_once_install_one_seed(
    redis: Redis, keys: Keys, log: UpdateLog, binary: Redis
) -> None:
    doc_id = await loaded(redis, keys, "shared text")
    other = UpdateLog(binary, keys, OPTIONS)
    seed = collab.seed_update("shared text")
    got = await asyncio.gather(log.seed(doc_id, seed, 3), other.seed(doc_id, seed, 3))
    assert sorted(got) == [SeedStatus.INSTALLED, SeedStatus.ALREADY]


async def test_a_trim_keeps_what_was_appended_while_the_flusher_folded(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    """The write-path race: the flusher reads a snapshot, folds it and writes Postgres while an
    editor's update lands; the trim removes only the folded entries, so the late update stays
    in the log, and the next fold has it."""
    doc_id = await co_edited(redis, keys, log)
    seed = collab.seed_update("seed text")
    updates = keystrokes(seed, "abc")
    for u in updates[:2]:
        await log.append(doc_id, u, "o", "alice", 1, GRANTS)
    snap = await log.read(doc_id, 100)  # the flusher's read
    late = await log.append(doc_id, updates[2], "o", "alice", 2, GRANTS)  # during the write
    assert snap.version is not None and late.version == snap.version + 1
    # Kept after the commit of the fold at the read version: the late update keeps it dirty.
    assert await keep(redis, keys, fold_of(doc_id, snap, updates[:2]), snap.version) == 0
    assert await redis.zscore(keys.dirty(keys.shard_of(doc_id)), doc_id) is not None
    after = await log.read(doc_id, 100)
    assert after.log == ((late.log_id, updates[2]),)
    assert after.folded_id == snap.log[-1][0] and after.text == "seed textab"
    assert collab.fold(after.state, [u for _, u in after.log]).text == "seed textabc"
    assert await redis.hget(keys.doc(doc_id), "yb") == str(len(updates[2]))


def fold_of(doc_id: str, snap: Snapshot, updates: Sequence[bytes]) -> Fold:
    """The fold of `snap`'s state with its first len(updates) log entries (`updates`, as
    appended), as the flusher builds it."""
    folded = collab.fold(snap.state, list(updates))
    last = snap.log[len(updates) - 1][0]
    return Fold(
        doc_id, last, folded.state, folded.text, sum(len(u) for u in updates), snap.folded_id
    )


async def keep(redis: Redis, keys: Keys, fold: Fold, version: int) -> int:
    """What the flusher does once the fold is committed at `version`: mark_clean, keeping the
    fold. How many documents went clean (0 or 1)."""
    shard = keys.shard_of(fold.doc_id)
    return await Scripts(redis, keys).mark_clean(
        shard, [(fold.doc_id, version)], TTL, 0, {fold.doc_id: fold}
    )


async def test_overlapping_folds_count_the_bytes_left_once(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    """Two folds of one document at once (a flush job beside the cron pass, or two flushers):
    A folds E1..E2, B folds E1..E3; A trims first, E4 lands, then B trims. B may count only E3
    as its own: had E1..E2 been subtracted twice, the log's byte count would read 0 with E4
    still in the log, and GET, trusting it, would answer B's text at E4's version (an HTTP
    editor's diff against that text then deletes E4: found by the Valkey-kill fault test)."""
    doc_id = await co_edited(redis, keys, log)
    updates = keystrokes(collab.seed_update("seed text"), "abcd")
    for u in updates[:3]:
        assert (await log.append(doc_id, u, "o", "alice", 1, GRANTS)).status == 1
    snap = await log.read(doc_id, 100)
    assert snap.version is not None
    first = fold_of(doc_id, snap, updates[:2])
    second = fold_of(doc_id, snap, updates[:3])
    await keep(redis, keys, first, snap.version)
    assert (await log.read(doc_id, 100)).folded_id == first.folded_id
    late = await log.append(doc_id, updates[3], "o", "alice", 2, GRANTS)
    await keep(redis, keys, second, snap.version)
    assert (await log.read(doc_id, 100)).log == ((late.log_id, updates[3]),)
    # What GET reads: entries left, so the text is the fold's plus the log's, not `c` alone.
    assert await redis.hget(keys.doc(doc_id), "yb") == str(len(updates[3]))
    after = await log.read(doc_id, 100)
    assert after.text == "seed textabc"
    assert collab.fold(after.state, [u for _, u in after.log]).text == "seed textabcd"


async def test_a_retried_or_stale_trim_changes_nothing(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    doc_id = await co_edited(redis, keys, log)
    updates = keystrokes(collab.seed_update("seed text"), "ab")
    first = await log.append(doc_id, updates[0], "o", "alice", 1, GRANTS)
    second = await log.append(doc_id, updates[1], "o", "alice", 2, GRANTS)
    snap = await log.read(doc_id, 100)
    assert [i for i, _ in snap.log] == [first.log_id, second.log_id]
    assert snap.version is not None
    whole = collab.fold(snap.state, [u for _, u in snap.log])
    assert await keep(redis, keys, fold_of(doc_id, snap, updates), snap.version) == 1
    # A flusher that folded only the first update, and a retry of the same fold: neither
    # changes the state, the text or the log (`part` would put "seed texta" back).
    part = fold_of(doc_id, snap, updates[:1])
    assert part.folded_id == first.log_id
    await keep(redis, keys, part, snap.version)
    await keep(redis, keys, fold_of(doc_id, snap, updates), snap.version)
    kept = await log.read(doc_id, 100)
    assert kept.state == whole.state and kept.text == "seed textab" and kept.log == ()
    # The emptied log goes with the clean hash; the next append recreates it after the fold.
    assert 0 < await redis.pttl(keys.update_log(doc_id)) <= TTL
    (more,) = keystrokes(whole.state, "c")
    again = await log.append(doc_id, more, "o", "alice", 3, GRANTS)
    assert again.status == AppendStatus.APPENDED
    assert await redis.pttl(keys.update_log(doc_id)) == -1


async def test_a_recreated_log_sorts_after_the_fold_even_if_the_clock_went_back(
    redis: Redis, keys: Keys, log: UpdateLog
) -> None:
    """A log whose key expired (the document was clean) starts over from the server clock; if
    that clock stepped back, a new id could sort before the folded one and every read after the
    fold would skip it. The append gives it an id after the fold instead."""
    doc_id = await co_edited(redis, keys, log)
    future = "99999999999999-5"  # a fold "from the future": the clock is now behind it
    await redis.hset(keys.doc(doc_id), "yl", future)
    (update,) = keystrokes(collab.seed_update("seed text"), "z")
    reply = await log.append(doc_id, update, "o", "alice", 1, GRANTS)
    assert reply.log_id == "99999999999999-6"
    assert (await log.read(doc_id, 100)).log == ((reply.log_id, update),)


@pytest.mark.parametrize("shards", [1, 64])
async def test_a_batch_read_and_its_kept_folds_answer_each_document_in_order(
    redis: Redis, binary: Redis, settings: Settings, shards: int
) -> None:
    """The flusher's batch: read_docs and mark_clean_shards slice each shard's ids (one script
    call per slice: 120 documents in one shard are three slices) and answer in the order asked,
    a missing document and a stale fold included."""
    keys = Keys(settings.key_prefix, shards)
    log = UpdateLog(binary, keys, OPTIONS)
    docs = [await co_edited(redis, keys, log, f"doc {i}") for i in range(120)]
    for i, doc_id in enumerate(docs):
        (update,) = keystrokes(collab.seed_update(f"doc {i}"), "!")
        assert (await log.append(doc_id, update, "o", "alice", 1, GRANTS)).status == 1
    missing = str(uuid.uuid4())
    by_shard: dict[int, list[str]] = {}
    for d in [*reversed(docs[60:]), missing, *docs[:60]]:
        by_shard.setdefault(keys.shard_of(d), []).append(d)
    order = [d for ids in by_shard.values() for d in ids]
    await redis.script_flush()  # a restarted server: the pipelined calls load and run again
    reads = await log.read_docs(list(by_shard.values()), 100)
    assert reads[order.index(missing)].version is None
    folds: dict[str, Fold] = {}
    written: dict[int, list[tuple[str, int]]] = {}
    for d, r in zip(order, reads, strict=True):
        if r.snapshot is not None and r.snapshot.state is not None:
            assert r.content is None and r.version == 4
            folds[d] = fold_of(d, r.snapshot, [u for _, u in r.snapshot.log])
            written.setdefault(keys.shard_of(d), []).append((d, 4))
    assert sorted(f.text for f in folds.values()) == sorted(f"doc {i}!" for i in range(120))
    scripts = Scripts(redis, keys)
    await redis.script_flush()
    assert await scripts.mark_clean_shards(list(written.items()), TTL, 0, folds) == 120
    # Older than the fold kept: changes nothing (a retried or stale flusher).
    assert await keep(redis, keys, Fold(docs[5], "0-1", b"", "", 0, "0-0"), 4) == 1
    after = [await log.read(d, 100) for d in docs]
    assert [(a.text, a.log) for a in after] == [(f"doc {i}!", ()) for i in range(120)]


async def test_read_docs_reads_plain_documents_in_order_across_slices(
    redis: Redis, binary: Redis, keys: Keys, log: UpdateLog
) -> None:
    """A batch's documents that are not co-edited: their text and fields, no snapshot; one
    shard's 130 ids are three slices, with a missing one, an edited one and a deleted one."""
    scripts = Scripts(redis, keys)
    ids: list[str] = []
    while len(ids) < 130:
        doc_id = str(uuid.uuid4())
        if keys.shard_of(doc_id) == 0:
            ids.append(doc_id)
    for n, doc_id in enumerate(ids):
        if n != 70:
            fields: dict[str, str | int] = {"v": 0, "sv": 0, "c": "", "acl": "t:tenant-a"}
            assert await scripts.seed(doc_id, {**fields, "at": 1}, TTL)
    for n in (0, 49, 50, 129):
        await scripts.edit(ids[n], f"c{n} ✓", None, "alice", 1000 + n, GRANTS)
    await scripts.delete(ids[5], TTL)
    got = await log.read_docs([ids], 100)
    assert len(got) == 130
    for n in (0, 49, 50, 129):
        assert (got[n].version, got[n].content, got[n].by, got[n].at) == (
            1,
            f"c{n} ✓",
            "alice",
            str(1000 + n),
        )
        assert not got[n].deleted and got[n].snapshot is None
    assert (got[6].version, got[6].content, got[6].by, got[6].at) == (0, "", None, "1")
    assert got[70].version is None and got[70].content is None
    assert got[5].deleted


def test_rounds_cut_by_bytes_keeping_one_item_at_least() -> None:
    assert rounds([], []) == []
    assert rounds([1, 2, 3], [10, 10, 10], limit=25) == [[1, 2], [3]]
    assert rounds([1, 2, 3], [30, 5, 40], limit=25) == [[1], [2], [3]]
    assert rounds([7, 8], [0, 0], limit=0) == [[7, 8]]


async def test_large_states_are_read_and_kept_outside_one_long_script(
    redis: Redis, binary: Redis, settings: Settings
) -> None:
    """Co-edited documents with states over INLINE_STATE_MAX (three of ~300 KB here, beside two
    small ones and a plain one, all in one shard): read_docs reads them with plain commands in
    MULTI/EXEC, in round trips of at most ROUND_BYTES, and gets the same snapshots; mark_clean
    keeps each large fold in a call of its own. Counted through the server's command stats."""
    keys = Keys(settings.key_prefix, 1)
    log = UpdateLog(binary, keys, OPTIONS)
    big = "x" * 300_000  # its seed state is ~300 KB, its fold's state and text ~600 KB
    texts = [big + "1", "small a", big + "2", "small b", big + "3"]
    docs = [await co_edited(redis, keys, log, t) for t in texts]
    plain = await loaded(redis, keys, "plain text")
    for doc_id, t in zip(docs, texts, strict=True):
        for u in keystrokes(collab.seed_update(t), "!?"):
            assert (await log.append(doc_id, u, "o", "alice", 1, GRANTS)).status == 1
    assert len(collab.seed_update(big)) > INLINE_STATE_MAX
    await redis.config_resetstat()
    reads = await log.read_docs([[*docs, plain]], 100)
    stats = await redis.info("commandstats")
    # ~300 KB of state each: all three fit one round trip of ROUND_BYTES.
    assert stats["cmdstat_exec"]["calls"] == 1 and stats["cmdstat_evalsha"]["calls"] == 1
    assert reads[-1].content == "plain text" and reads[-1].snapshot is None
    folds: dict[str, Fold] = {}
    for doc_id, t, r in zip(docs, texts, reads[:-1], strict=True):
        assert r.snapshot is not None and r.snapshot.state is not None
        assert (r.version, r.by, len(r.snapshot.log)) == (5, "alice", 2)
        fold = fold_of(doc_id, r.snapshot, [u for _, u in r.snapshot.log])
        assert fold.text == t + "!?"
        folds[doc_id] = fold
    await redis.config_resetstat()
    scripts = Scripts(redis, keys)
    written = [(d, 5) for d in docs]
    assert await scripts.mark_clean_shards([(0, written)], TTL, 0, folds) == 5
    # ~600 KB of state and text a large fold: big 1 + small a, big 2 + small b, big 3, each call
    # its own round trip (one call of all five would hold Redis for ~1.8 MB of copies).
    assert (await redis.info("commandstats"))["cmdstat_evalsha"]["calls"] == 3
    for doc_id, t in zip(docs, texts, strict=True):
        kept = await log.read(doc_id, 100)
        assert (kept.text, kept.log) == (t + "!?", ())


async def _heard(pubsub: PubSub, within_s: float = 0.3) -> list[bytes]:
    """The messages `pubsub` receives within `within_s` (subscribe confirmations left out)."""
    out: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + within_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            out.append(message["data"])
    return out


async def test_an_append_is_published_unless_only_its_own_process_listens(
    redis: Redis, keys: Keys, log: UpdateLog, binary: Redis
) -> None:
    """own_relay: the calling process's control channel. While that process's one connection is
    the document's only subscriber, nobody would read the message (a process skips its own);
    once another process subscribes, or without own_relay (an HTTP edit), it is published."""
    doc_id = await co_edited(redis, keys, log)
    channel, control = keys.collab_channel(doc_id), keys.collab_channel("-p1")
    ours, theirs = binary.pubsub(), binary.pubsub()
    await ours.subscribe(control, channel)
    typed = iter(keystrokes(collab.seed_update("seed text"), "abcde"))
    try:

        async def append(own_relay: str | None) -> bytes:
            update = next(typed)
            reply = await log.append(doc_id, update, "p1:s1", "alice", 1, GRANTS, None, own_relay)
            assert reply.status == AppendStatus.APPENDED
            return f"p1:s1 {reply.log_id} ".encode() + update

        await append(control)
        assert await _heard(ours) == [], "its own process was the only listener"
        http_edit = await append(None)
        assert await _heard(ours) == [http_edit]
        # Another process's connection without this one's control channel: a control nobody
        # holds (this process's connection is down) publishes too.
        await theirs.subscribe(channel)
        await _heard(theirs)
        seen = await append(control)
        assert await _heard(theirs) == [seen]
        await ours.unsubscribe(control)
        await _heard(ours)
        await theirs.unsubscribe(channel)
        await _heard(theirs)
        alone = await append(control)
        assert await _heard(ours) == [alone], "its control unheard here: published all the same"
    finally:
        await ours.aclose()  # type: ignore[no-untyped-call]
        await theirs.aclose()  # type: ignore[no-untyped-call]
    assert len((await log.read(doc_id, 100)).log) == 4


async def test_a_capped_append_refuses_what_could_pass_the_document_size_cap(
    redis: Redis, keys: Keys, binary: Redis
) -> None:
    """The text as folded (9 bytes) plus the log's updates plus this one may not pass the cap:
    the one that would is refused and never enters the log. An uncapped append (HTTP, whose
    whole text was measured) is not held to it."""
    first = UpdateLog(binary, keys, OPTIONS)
    doc_id = await co_edited(redis, keys, first)
    typed = keystrokes(collab.seed_update("seed text"), "abcd")
    cap = len("seed text") + sum(len(u) for u in typed[:3])
    log = UpdateLog(binary, keys, AppendOptions(OPTIONS.limits, max_document_bytes=cap))
    for update in typed[:3]:
        reply = await log.append(doc_id, update, "p1:s1", "alice", 5000, GRANTS, capped=True)
        assert reply.status == AppendStatus.APPENDED
    refused = await log.append(doc_id, typed[3], "p1:s1", "alice", 5000, GRANTS, capped=True)
    assert refused.status == AppendStatus.TOO_LARGE
    snap = await log.read(doc_id, 100)
    assert [u for _, u in snap.log] == typed[:3] and snap.version == 6
    assert (await log.append(doc_id, typed[3], "h", "alice", 5000, GRANTS)).status == (
        AppendStatus.APPENDED
    )


async def test_a_read_returns_a_log_longer_than_its_own_cap_whole(
    redis: Redis, keys: Keys, binary: Redis
) -> None:
    """An api process with a larger REDLINE_COLLAB_LOG_MAX_ENTRIES appended 25 entries; a reader
    whose cap is 10 still gets all 25 (a GET, an HTTP diff, a step 1), not the first 10."""
    large = UpdateLog(binary, keys, AppendOptions(LogLimits(entries=100, bytes=100_000)))
    doc_id = await co_edited(redis, keys, large)
    typed = "abcdefghijklmnopqrstuvwxy"
    for update in keystrokes(collab.seed_update("seed text"), typed):
        assert (await large.append(doc_id, update, "o", "alice", 1, GRANTS)).status == (
            AppendStatus.APPENDED
        )
    for cap in (10, 24, 25, 26):
        snapshot = await large.read(doc_id, cap)
        assert len(snapshot.log) == 25
        assert snapshot.state is not None
        text = collab.fold(snapshot.state, [u for _, u in snapshot.log]).text
        assert text == "seed text" + typed
