"""The matcher's sockets under hostile input: every spelling of a document id is one document,
stream ids are checked before Redis sees them, sockets per user and subscribe frames are capped,
and the bearer subprotocol comes back as the client spelled it. Every refusal is a frame, an
HTTP problem before accept, or a close with a specific code; never 1011."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from deploy.embedded import free_port
from shared.infra.clock import now_ms
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.services.matcher.conftest import make_user, matcher_server, open_socket, recv, send
from tests.services.matcher.test_events import (
    event,
    events_socket,
    followed_streams,
    subscribe,
    two_editors,
    until,
)
from tests.support.users import edit, signup


@pytest.fixture
async def events_url(settings: Settings) -> AsyncIterator[str]:
    async with matcher_server(settings) as url:
        yield url


async def pong(ws: ClientConnection) -> None:
    """The socket is still open and answering (a bad frame did not close it)."""
    await send(ws, type="ping")
    frame, _ = await until(ws, lambda f: f["type"] == "pong")
    assert frame == {"type": "pong"}


def spellings(doc_id: str) -> list[str]:
    """16 distinct spellings of one id, all of which uuid.UUID reads as the same."""
    u = uuid.UUID(doc_id)
    forms = [str(u), u.hex, "{" + str(u) + "}", "urn:uuid:" + str(u)]
    out = [f(x) for x in forms for f in (str.lower, str.upper)]
    out += ["{" + u.hex + "}", "urn:uuid:" + u.hex, "URN:UUID:" + u.hex.upper()]
    out += [str(u)[:9] + str(u)[9:].upper(), "{" + u.hex.upper() + "}", str(u).title()]
    out += ["urn:uuid:{" + str(u) + "}", str(u)[:18] + str(u)[18:].upper()]
    # Partial upper-casings coincide with others when the id's hex letters sit elsewhere (an id
    # whose first 8 characters are digits): more candidates, then the first 16 distinct ones.
    out += [str(u)[:i] + str(u)[i:].upper() for i in (4, 14, 24, 30, 34)]
    out += ["urn:uuid:{" + str(u).upper() + "}", "urn:uuid:{" + u.hex + "}"]
    out = list(dict.fromkeys(out))[:16]
    assert len(out) == 16, out
    return out


# Canonical document ids -----------------------------------------------------------------------
async def test_every_spelling_of_a_document_id_is_one_document(
    api: httpx.AsyncClient, events_url: str, redis: Redis, settings: Settings
) -> None:
    alice, bob, doc_id = await two_editors(api)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    http = events_url.replace("ws://", "http://")
    names = spellings(doc_id)
    async with (
        events_socket(events_url, alice) as a,
        events_socket(events_url, bob) as b,
        httpx.AsyncClient() as client,
    ):
        for name in names:
            answer = await subscribe(a, name)
            assert answer["type"] == "subscribed", (name, answer)
            assert answer["document_id"] == doc_id  # answered with the canonical id
        upper = await subscribe(b, doc_id.upper())
        assert (upper["type"], upper["document_id"]) == ("subscribed", doc_id)
        # One document stream (and the two inboxes), whatever the spelling.
        assert await followed_streams(client, http) == 3
        # One copy of the document in Redis: no key was built from another spelling.
        stored = {k async for k in redis.scan_iter(match=f"{settings.key_prefix}:*doc:*")}
        assert stored, "the document is in Redis"
        assert all(doc_id in k for k in stored), stored
        for n in names:
            if n != doc_id:
                assert not await redis.exists(keys.doc(n), keys.doc_events(n)), n
        # The events reach the subscriber who spelled it in upper case.
        version = (await edit(api, alice, doc_id, "hello")).json()["version"]
        got, _ = await until(b, event("document.edited", version=version))
        assert got["document_id"] == doc_id
        # Unsubscribing by another spelling ends the one subscription.
        await send(a, type="unsubscribe", document_id=names[-1])
        done, before = await until(a, lambda f: f["type"] == "unsubscribed")
        assert done == {"type": "unsubscribed", "document_id": doc_id}
        # The sixteen subscriptions were one: the edit reached alice once.
        assert [(f["event"], f["version"]) for f in before] == [("document.edited", version)]


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "",
        "\u0661" * 32,
        "0f8fad5b_d9cb-469f-a165-70867728950e",
        "{" + "a" * 32,
        "x" * 5000,
    ],
)
async def test_an_id_that_is_not_a_uuid_gets_an_error_frame(
    api: httpx.AsyncClient, events_url: str, bad: str
) -> None:
    alice = await signup(api, "alice")
    async with events_socket(events_url, alice) as ws:
        answer = await subscribe(ws, bad)
        assert answer["type"] == "error" and "document_id" in answer["detail"], answer
        await send(ws, type="unsubscribe", document_id=bad)
        frame = await recv(ws)
        assert frame["type"] == "error" and "document_id" in frame["detail"], frame
        await pong(ws)


# Stream ids -----------------------------------------------------------------------------------
ARABIC_INDIC = "\u0661-\u0660"  # Unicode digits: they pass a Unicode-aware \\d and int()
BAD_IDS = [
    ARABIC_INDIC,
    "1_0-0",
    "99999999999999999999-0",
    "0-99999999999999999999",
    "1",
    "-1-0",
    "1-",
]


@pytest.mark.parametrize("since", BAD_IDS)
async def test_a_bad_since_gets_an_error_frame(
    api: httpx.AsyncClient, events_url: str, since: str
) -> None:
    alice, _, doc_id = await two_editors(api)
    async with events_socket(events_url, alice) as ws:
        answer = await subscribe(ws, doc_id, since=since)
        assert answer["type"] == "error" and "since" in answer["detail"], answer
        await pong(ws)
        # Still usable: a good subscribe after it works.
        assert (await subscribe(ws, doc_id))["type"] == "subscribed"


async def test_the_largest_stream_ids_are_accepted_and_answered(
    api: httpx.AsyncClient, events_url: str
) -> None:
    alice, _, doc_id = await two_editors(api)
    await edit(api, alice, doc_id, "one event")
    top = f"{2**64 - 1}-{2**64 - 1}"  # Redis refuses it as an exclusive start: not sent there
    async with events_socket(events_url, alice, f"?inbox_since={top}") as ws:
        for since in (f"{2**64 - 1}-0", top):
            await send(ws, type="subscribe", document_id=doc_id, since=since)
            got, _ = await until(ws, lambda f: f["type"] in ("subscribed", "error"))
            # Not an id of this stream (after its newest): refetch, then follow.
            assert got["type"] == "subscribed", (since, got)
        # Leading zeros are the same id, as Redis reads it.
        assert (await subscribe(ws, doc_id, since="00000-0"))["type"] == "subscribed"
        await pong(ws)


@pytest.mark.parametrize("since", BAD_IDS)
async def test_a_bad_inbox_since_is_told_and_closed_1008(
    api: httpx.AsyncClient, events_url: str, since: str
) -> None:
    alice = await signup(api, "alice")
    query = "?" + httpx.QueryParams({"inbox_since": since}).__str__()
    async with events_socket(events_url, alice, query) as ws:
        told = await recv(ws)
        assert told["type"] == "error" and "inbox_since" in told["detail"], told
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "invalid inbox_since")


# Caps -----------------------------------------------------------------------------------------
async def test_sockets_per_user_are_capped_across_processes(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    settings = make_settings(migrated, ws_max_sockets_per_user=3)
    ada = await make_user(api, db, "ada", ["chess"])
    bob = await make_user(api, db, "bob", ["chess"])
    async with (
        matcher_server(settings) as one,
        matcher_server(settings) as two,
        open_socket(one, ada) as m1,
        events_socket(one, ada) as e1,
        events_socket(two, ada) as e2,
    ):
        await pong(m1)
        await pong(e1)
        for url, opener in ((two, open_socket), (one, events_socket), (two, events_socket)):
            with pytest.raises(InvalidStatus) as refused:
                async with opener(url, ada):
                    pass
            response = refused.value.response
            assert response.status_code == 429
            assert response.headers["Content-Type"] == "application/problem+json"
            assert int(response.headers["Retry-After"]) >= 1
            body = json.loads(response.body)
            assert body["status"] == 429 and "3" in body["detail"]
        # Another user is not affected.
        async with open_socket(two, bob) as b:
            await pong(b)
        # A socket that closes gives its place back (on whichever process).
        await e2.close()
        async with events_socket(one, ada) as again:
            await pong(again)
    # Every place was given back on close.
    assert await redis.zcard(keys.user_sockets(ada.user_id)) == 0


async def test_a_place_held_by_a_dead_process_lapses(
    migrated: Servers, api: httpx.AsyncClient, redis: Redis, keys: Keys
) -> None:
    settings = make_settings(migrated, ws_max_sockets_per_user=1)
    ada = await signup(api, "ada")
    # An entry its process never renewed nor removed (it died): lapsed a moment ago.
    await redis.zadd(keys.user_sockets(ada.user_id), {"dead-process-socket": now_ms() - 1})
    async with matcher_server(settings) as url, events_socket(url, ada) as ws:
        await pong(ws)
        assert await redis.zrange(keys.user_sockets(ada.user_id), 0, -1) != ["dead-process-socket"]
        assert await redis.zcard(keys.user_sockets(ada.user_id)) == 1


async def test_subscribe_frames_are_rate_limited(
    migrated: Servers, api: httpx.AsyncClient, redis: Redis
) -> None:
    settings = make_settings(migrated, subscribe_rate=3, subscribe_period_s=60)
    alice, _, doc_id = await two_editors(api)
    docs = [doc_id]
    for i in range(3):
        r = await api.post(
            "/v1/documents", json={"title": f"d{i}", "content": ""}, headers=alice.auth
        )
        docs.append(r.json()["id"])
    async with matcher_server(settings) as url, httpx.AsyncClient() as client:
        http = url.replace("ws://", "http://")
        async with events_socket(url, alice) as ws:
            for d in docs[:3]:
                assert (await subscribe(ws, d))["type"] == "subscribed"
            await send(ws, type="subscribe", document_id=docs[3])
            limited = await recv(ws)
            assert limited["type"] == "rate_limited", limited
            assert limited["document_id"] == docs[3]
            # One subscribe every 20 s comes back.
            assert 1 <= limited["retry_after"] <= 20
            # Not performed: the fourth document is not followed (3 documents + the inbox).
            assert await followed_streams(client, http) == 4
            await pong(ws)
        # Per user, not per socket: a new socket does not get a fresh allowance.
        async with events_socket(url, alice) as ws:
            await send(ws, type="subscribe", document_id=docs[3])
            assert (await recv(ws))["type"] == "rate_limited"


# The bearer subprotocol -----------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["BEARER", "Bearer", "bearer"])
async def test_the_subprotocol_is_echoed_as_the_client_offered_it(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, spelling: str
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    offered: Any = [spelling, ada.token]
    async with open_socket(matcher_url, None, subprotocols=offered) as ws:
        assert ws.subprotocol == spelling
        await pong(ws)
    async with connect(f"{matcher_url}/v1/ws/events", subprotocols=offered) as ws:
        assert ws.subprotocol == spelling
        await pong(ws)


# A store away mid-session -------------------------------------------------------------------
async def test_a_store_away_mid_session_closes_1013_not_1011(
    migrated: Servers, api: httpx.AsyncClient
) -> None:
    alice = await signup(api, "alice")
    # Nothing listens there: the events handshake needs Redis only; a subscribe to a document
    # that is not in Redis then has to ask Postgres.
    dead = f"postgresql://redline@127.0.0.1:{free_port()}/redline"
    settings = make_settings(migrated, database_url=dead, db_pool_min=0)
    async with matcher_server(settings) as url, events_socket(url, alice) as ws:
        await send(ws, type="subscribe", document_id=str(uuid.uuid4()))
        with pytest.raises(ConnectionClosed) as closed:
            await until(ws, lambda f: False, within=15)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1013, closed.value.rcvd
