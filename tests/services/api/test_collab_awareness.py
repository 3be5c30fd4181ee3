"""Stored awareness and the session watch on /v1/collab/{id}, under real uvicorn processes with
real Valkey: a late joiner sees the others' cursors at once, a closed socket's clients go null
for everyone (across two api processes), the caps refuse without closing, entries expire,
query-awareness is answered from the store, and a session that expires closes its sockets 1008."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from shared.domain import collab
from shared.domain.accounts import token_hash
from shared.domain.collab import AwarenessEntry
from shared.settings import Settings
from shared.store.keys import Keys
from tests.support.collab import Editor, api_server
from tests.support.users import User, create_doc, signup


class Heard:
    """The awareness entries one editor received, in order."""

    def __init__(self) -> None:
        self.entries: list[AwarenessEntry] = []
        self.frames = 0

    def __call__(self, frame: bytes) -> None:
        msg = collab.parse(frame)
        assert isinstance(msg, collab.Awareness)
        self.frames += 1
        self.entries.extend(collab.parse_awareness(msg.payload))

    def of(self, client: int) -> list[AwarenessEntry]:
        return [e for e in self.entries if e.client == client]

    async def until(self, client: int, state: bytes, within: float = 5.0) -> AwarenessEntry:
        """The first entry of `client` with `state` to arrive."""
        for _ in range(int(within / 0.01)):
            for entry in self.of(client):
                if entry.state == state:
                    return entry
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {state!r} for client {client}: heard {self.entries}")

    async def frames_after(self, count: int, within: float = 5.0) -> None:
        for _ in range(int(within / 0.01)):
            if self.frames > count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no further awareness frame")


@asynccontextmanager
async def aware_editor(host: str, user: User, doc_id: str) -> AsyncIterator[tuple[Editor, Heard]]:
    """An editor that records every awareness frame from the moment it connects (a late joiner's
    stored states come right after the server's step 1, before the sync completes)."""
    heard = Heard()
    async with connect(
        f"ws://{host}/v1/collab/{doc_id}", additional_headers=user.auth, max_size=None
    ) as ws:
        ed = Editor(ws)
        ed.on_other = heard
        await ed.start()
        try:
            yield ed, heard
        finally:
            await ed.close()


def state(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


async def announce(ed: Editor, client: int, clock: int, body: bytes) -> None:
    await ed.ws.send(collab.awareness_frame([(client, clock, body)]))


async def query(ed: Editor, heard: Heard) -> list[AwarenessEntry]:
    """Ask with query-awareness: the entries of the one answer."""
    before, seen = heard.frames, len(heard.entries)
    await ed.ws.send(collab.encode(collab.QueryAwareness()))
    await heard.frames_after(before)
    return heard.entries[seen:]


async def test_a_late_joiner_sees_the_others_cursors_at_once(
    host: str, http: httpx.AsyncClient
) -> None:
    ada = await signup(http, "ada")
    doc = (await create_doc(http, ada, content="hello"))["id"]
    cursor = state(user="ada", cursor=3)
    async with aware_editor(host, ada, doc) as (first, first_heard):
        await announce(first, 11, 4, cursor)
        await first_heard.until(11, cursor)  # stored, then relayed (to the sender too)
        async with aware_editor(host, ada, doc) as (_, late):
            # Nobody announced anything since it joined: what it has came from the store.
            assert late.of(11) == [AwarenessEntry(11, 4, cursor)]


async def test_a_closed_sockets_clients_go_null_for_the_others_across_processes(
    host: str, http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    keys = Keys(collab_settings.key_prefix, collab_settings.doc_shards)
    redis = Redis.from_url(collab_settings.state_url)
    async with api_server(collab_settings) as other:
        ada = await signup(http, "ada")
        doc = (await create_doc(http, ada, content="x"))["id"]
        try:
            async with aware_editor(other, ada, doc) as (_, there):
                async with aware_editor(host, ada, doc) as (here, _):
                    await announce(here, 21, 7, state(user="ada"))
                    await announce(here, 22, 1, state(user="ada's second view"))
                    await there.until(22, state(user="ada's second view"))
                    assert await redis.hlen(keys.awareness(doc)) == 2
                gone = [await there.until(c, b"null") for c in (21, 22)]
                assert gone == [AwarenessEntry(21, 8, b"null"), AwarenessEntry(22, 2, b"null")]
                assert await redis.hlen(keys.awareness(doc)) == 0
        finally:
            await redis.aclose()


async def test_past_the_caps_a_state_is_neither_stored_nor_relayed_and_the_socket_stays(
    http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    small = collab_settings.model_copy(
        update={"collab_awareness_max_state_bytes": 64, "collab_awareness_max_entries": 2}
    )
    async with api_server(small) as address, httpx.AsyncClient(base_url=f"http://{address}") as c:
        ada = await signup(c, "ada")
        doc = (await create_doc(c, ada))["id"]
        async with (
            aware_editor(address, ada, doc) as (one, _),
            aware_editor(address, ada, doc) as (two, two_heard),
        ):
            big = state(name="x" * 100)
            await announce(one, 1, 1, big)
            await announce(one, 2, 1, state(n=2))
            await announce(one, 3, 1, state(n=3))
            await announce(one, 4, 1, state(n=4))  # a third client: over the entry cap
            await announce(one, 3, 2, state(n=33))  # an existing one still updates
            await two_heard.until(3, state(n=33))
            assert two_heard.of(1) == [] and two_heard.of(4) == []
            assert [(e.client, e.clock) for e in await query(two, two_heard)] == [(2, 1), (3, 2)]
            assert one.ws.close_code is None


async def test_awareness_expires_unrenewed(
    http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    """An entry lapses on its own (while the hash lives on, renewed by another client), and the
    hash lapses with its last entry: nobody unrenewed is sent to a late joiner."""
    brief = collab_settings.model_copy(update={"collab_awareness_ttl_s": 0.6})
    async with api_server(brief) as address, httpx.AsyncClient(base_url=f"http://{address}") as c:
        ada = await signup(c, "ada")
        doc = (await create_doc(c, ada))["id"]
        async with aware_editor(address, ada, doc) as (one, heard):
            await announce(one, 5, 1, state(user="ada"))
            await heard.until(5, state(user="ada"))
            await asyncio.sleep(0.4)
            await announce(one, 6, 1, state(user="ada, elsewhere"))
            await heard.until(6, state(user="ada, elsewhere"))
            await asyncio.sleep(0.3)  # 5 is past its 0.6 s, 6 is not
            assert [e.client for e in await query(one, heard)] == [6]
            await asyncio.sleep(0.6)
            assert await query(one, heard) == []
            async with aware_editor(address, ada, doc) as (late, late_heard):
                assert await query(late, late_heard) == []
                assert late_heard.of(5) == late_heard.of(6) == []


async def test_query_awareness_is_answered_with_every_stored_state(
    host: str, http: httpx.AsyncClient
) -> None:
    ada = await signup(http, "ada")
    doc = (await create_doc(http, ada))["id"]
    async with (
        aware_editor(host, ada, doc) as (one, heard),
        aware_editor(host, ada, doc) as (
            two,
            _,
        ),
    ):
        assert await query(one, heard) == []  # nothing stored: still an answer
        await announce(one, 8, 3, state(user="ada"))
        await announce(two, 9, 1, state(user="bob"))
        await heard.until(9, state(user="bob"))
        assert await query(one, heard) == [
            AwarenessEntry(8, 3, state(user="ada")),
            AwarenessEntry(9, 1, state(user="bob")),
        ]


async def test_a_session_that_expires_closes_its_collab_socket_1008(
    http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    """No logout, no publish: the session key just lapses (here shortened, as an operator's
    PEXPIRE would; at its own TTL the watch looks at the known expiry the same way)."""
    watched = collab_settings.model_copy(update={"ws_session_check_s": 0.2})
    keys = Keys(watched.key_prefix, watched.doc_shards)
    redis = Redis.from_url(watched.state_url)
    try:
        async with (
            api_server(watched) as address,
            httpx.AsyncClient(base_url=f"http://{address}") as c,
        ):
            ada = await signup(c, "ada")
            bob = await signup(c, "bob")
            doc = (await create_doc(c, ada))["id"]
            other = (await create_doc(c, bob))["id"]
            async with (
                aware_editor(address, ada, doc) as (ed, _),
                aware_editor(address, bob, other) as (kept, _),
            ):
                await asyncio.sleep(0.3)  # checked at least once: alive
                assert ed.ws.close_code is None
                assert await redis.pexpire(keys.session(token_hash(ada.token)), 100)
                await ed.closed()
                assert ed.ws.close_code == 1008
                assert ed.ws.close_reason == "session ended"
                assert kept.ws.close_code is None  # another session: untouched
    finally:
        await redis.aclose()
