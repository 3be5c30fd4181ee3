"""Stored awareness: the awareness update's wire format (shared/domain/collab.py) against pycrdt's
own y-protocols implementation, and the awareness scripts (shared/store/lua/awareness_*.lua)
against a real Redis: only newer clocks replace an entry, the caps refuse, expired entries are
swept and never read, the hash expires, a closing socket clears only what it still owns."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from pycrdt import Awareness as PyAwareness
from pycrdt import Doc, Text
from redis.asyncio import Redis

from shared.domain import collab
from shared.domain.collab import AwarenessEntry, MalformedMessage
from shared.infra.clients import redis_client
from shared.settings import Settings
from shared.store.awareness import AwarenessLimits, AwarenessStatus, AwarenessStore
from shared.store.keys import Keys
from shared.store.scripts import Scripts

LIMITS = AwarenessLimits(ttl_ms=30_000, max_entries=3, max_state_bytes=64)
NOW = 1_000_000
STORED, REMOVED, STALE = AwarenessStatus.STORED, AwarenessStatus.REMOVED, AwarenessStatus.STALE


# The wire format ------------------------------------------------------------------------------
def test_an_awareness_update_from_pycrdt_parses_into_its_entries() -> None:
    ydoc: Doc[Text] = Doc()
    awareness = PyAwareness(ydoc)
    awareness.set_local_state({"user": {"name": "ada 😀"}, "cursor": None})
    awareness.set_local_state_field("cursor", {"anchor": 3})
    payload = awareness.encode_awareness_update([ydoc.client_id])
    (entry,) = collab.parse_awareness(payload)
    assert entry.client == ydoc.client_id  # 53 bits: pycrdt's ids are wider than Yjs's 32
    assert entry.clock == 2  # one per change of its state (an empty one came first, at 0)
    assert json.loads(entry.state) == {"user": {"name": "ada 😀"}, "cursor": {"anchor": 3}}


def test_frames_we_build_are_read_by_pycrdt() -> None:
    """A late joiner's stored states, then a closed socket's clients gone, applied by pycrdt's
    y-protocols implementation as a browser's would be."""
    stored = [(7, 4, b'{"user":"ada"}'), (2**40, 1, b'{"user":"bob"}')]
    frame = collab.awareness_frame(stored)
    message = collab.parse(frame)
    assert isinstance(message, collab.Awareness)
    assert collab.parse_awareness(message.payload) == [AwarenessEntry(*e) for e in stored]
    other = PyAwareness(Doc())
    other.apply_awareness_update(message.payload, "server")
    assert other.states[7] == {"user": "ada"} and other.states[2**40] == {"user": "bob"}
    gone = collab.parse(collab.gone_frame([(7, 4)]))
    assert isinstance(gone, collab.Awareness)
    assert collab.parse_awareness(gone.payload) == [AwarenessEntry(7, 5, b"null")]
    other.apply_awareness_update(gone.payload, "server")
    assert 7 not in other.states and 2**40 in other.states
    assert collab.parse_awareness(b"\x00") == []  # the heartbeat's: nobody


@pytest.mark.parametrize(
    "payload",
    [
        b"\x01\x07\x01\x03{}",  # truncated state
        b"\x02\x07\x01\x02{}",  # fewer entries than counted
        b"\x01\x07\x01\x02{}x",  # trailing bytes
        b"\x01\x07\x01\x03{x}",  # not JSON
        b"\x01\x07\x01\x03NaN",  # JSON to Python, not to JSON.parse
        b"\x01\x07\x01\x02\xff\xfe",  # not UTF-8
    ],
)
def test_a_malformed_awareness_update_is_refused(payload: bytes) -> None:
    with pytest.raises(MalformedMessage):
        collab.parse_awareness(payload)


# The scripts ----------------------------------------------------------------------------------
@pytest.fixture
def store(binary: Redis, keys: Keys) -> AwarenessStore:
    return AwarenessStore(binary, keys, LIMITS)


def doc() -> str:
    return str(uuid.uuid4())


async def test_an_entry_is_stored_and_only_a_newer_clock_replaces_it(
    store: AwarenessStore,
) -> None:
    d = doc()
    assert await store.set(d, [(7, 1, b'{"at":1}')], "p:a", NOW) == [STORED]
    assert await store.set(d, [(7, 1, b'{"at":2}')], "p:a", NOW) == [STALE]  # a repeat
    assert await store.set(d, [(7, 0, b'{"at":0}')], "p:b", NOW) == [STALE]  # older
    assert await store.states(d, NOW) == [(7, 1, b'{"at":1}')]
    assert await store.set(d, [(7, 2, b'{"at":3}'), (8, 1, b"{}")], "p:a", NOW) == [STORED] * 2
    assert await store.states(d, NOW) == [(7, 2, b'{"at":3}'), (8, 1, b"{}")]
    # A null state at a newer clock: the client left.
    assert await store.set(d, [(7, 3, b"null")], "p:a", NOW) == [REMOVED]
    assert await store.states(d, NOW) == [(8, 1, b"{}")]


async def test_a_reconnecting_client_takes_its_entry_over_at_the_same_clock(
    store: AwarenessStore,
) -> None:
    """y-websocket resends its state on reconnect without a new clock: the new socket owns the
    entry, so the old socket's late close clears nothing of it."""
    d = doc()
    assert await store.set(d, [(7, 5, b'{"n":1}')], "p:old", NOW) == [STORED]
    assert await store.set(d, [(7, 5, b'{"n":1}')], "p:new", NOW + 10) == [STORED]
    assert await store.clear(d, "p:old", [7]) == []
    assert await store.states(d, NOW + 10) == [(7, 5, b'{"n":1}')]
    assert await store.clear(d, "p:new", [7, 9]) == [(7, 5)]
    assert await store.states(d, NOW + 10) == []


async def test_past_the_caps_an_entry_is_refused(store: AwarenessStore) -> None:
    d = doc()
    big = b'"' + b"x" * 63 + b'"'  # 65 bytes, over 64
    assert await store.set(d, [(1, 1, big)], "p:a", NOW) == [AwarenessStatus.TOO_BIG]
    three = [(1, 1, b"{}"), (2, 1, b"{}"), (3, 1, b"{}")]
    assert await store.set(d, [*three, (4, 1, b"{}")], "p:a", NOW) == [STORED] * 3 + [
        AwarenessStatus.FULL
    ]
    # An existing client still updates at the cap; a removal makes room.
    assert await store.set(d, [(2, 2, b'{"x":1}')], "p:a", NOW) == [STORED]
    assert await store.set(d, [(3, 2, b"null"), (4, 1, b"{}")], "p:a", NOW) == [REMOVED, STORED]
    assert [c for c, _, _ in await store.states(d, NOW)] == [1, 2, 4]


async def test_expired_entries_are_never_read_and_swept_to_make_room(
    store: AwarenessStore, binary: Redis, keys: Keys
) -> None:
    d = doc()
    later = NOW + LIMITS.ttl_ms
    assert await store.set(d, [(1, 1, b"{}"), (2, 1, b"{}")], "p:a", NOW) == [STORED] * 2
    assert await store.set(d, [(3, 1, b"{}")], "p:a", NOW + 5_000) == [STORED]
    assert [c for c, _, _ in await store.states(d, later - 1)] == [1, 2, 3]
    assert [c for c, _, _ in await store.states(d, later)] == [3]
    # At the cap with two expired: the new client sweeps them and fits.
    assert await store.set(d, [(4, 1, b"{}")], "p:b", later) == [STORED]
    assert sorted(await binary.hkeys(keys.awareness(d))) == [b"3", b"4"]
    # An expired entry counts as absent: even an older clock replaces it.
    assert await store.set(d, [(9, 8, b"{}")], "p:a", later) == [STORED]
    assert await store.set(d, [(9, 1, b"{}")], "p:b", later + LIMITS.ttl_ms) == [STORED]


async def test_the_hash_expires_with_its_last_update_and_holds_no_other_key(
    store: AwarenessStore, binary: Redis, keys: Keys
) -> None:
    d = doc()
    key = keys.awareness(d)
    assert key.startswith(keys.doc(d))  # the document's hash tag: one slot with its other keys
    await store.set(d, [(1, 1, b"{}")], "p:a", NOW)
    ttl = await binary.pttl(key)
    assert 0 < ttl <= LIMITS.ttl_ms
    short = AwarenessStore(binary, keys, AwarenessLimits(50, 3, 64))
    await short.set(d, [(1, 2, b"{}")], "p:a", NOW)
    assert 0 < await binary.pttl(key) <= 50
    for _ in range(100):
        if not await binary.exists(key):
            break
        await asyncio.sleep(0.01)
    assert not await binary.exists(key)


async def test_the_relay_is_published_only_when_every_entry_was_taken(
    store: AwarenessStore, binary: Redis, keys: Keys, settings: Settings
) -> None:
    d = doc()
    listener = redis_client(settings.state_url, binary=True)
    try:
        async with listener.pubsub() as pubsub:
            await pubsub.subscribe(keys.collab_channel(d))
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            await store.set(d, [(1, 1, b"{}")], "p:a", NOW, relay=b"first")
            await store.set(d, [(1, 1, b"{}")], "p:a", NOW, relay=b"stale: not sent")
            await store.set(d, [(2, 1, b"{}"), (1, 1, b"{}")], "p:a", NOW, relay=b"half")
            await store.set(d, [(2, 2, b"null")], "p:a", NOW, relay=b"gone")
            heard = []
            for _ in range(20):
                message = await pubsub.get_message(timeout=0.1)
                if message is not None:
                    heard.append(message["data"])
            assert heard == [b"first", b"gone"]
    finally:
        await listener.aclose()


async def test_deleting_the_document_drops_its_awareness(
    store: AwarenessStore, redis: Redis, keys: Keys
) -> None:
    d = doc()
    assert await store.set(d, [(7, 1, b'{"at":1}')], "p:a", NOW) == [STORED]
    await Scripts(redis, keys).delete(d, 60_000)
    assert await store.states(d, NOW) == []
    assert await redis.exists(keys.awareness(d)) == 0
