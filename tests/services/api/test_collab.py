"""The co-editing socket, /v1/collab/{id}, under a real uvicorn with pycrdt clients speaking the
y-websocket protocol: editors converge, every acknowledged update is in the document's log,
access is refused before accept, and bad frames close the socket without entering the log."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from shared.domain import collab
from shared.settings import Settings
from shared.store.keys import Keys
from tests.support.collab import Editor, api_server, editor, stored_text
from tests.support.users import User, create_doc, signup


async def test_two_editors_typing_at_once_converge_with_nothing_lost(
    host: str, http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="start 😀 é\u0301 ")
    rng = random.Random(3)
    typed: list[str] = []
    async with editor(host, ada, doc["id"]) as one, editor(host, ada, doc["id"]) as two:
        assert str(one.text) == str(two.text) == "start 😀 é\u0301 "  # seeded once, not twice
        for i in range(60):
            ed = one if i % 2 else two
            chars = rng.choice(["a", "b", "😀", "e\u0301", "中", " "])
            typed.append(chars)
            await ed.type(rng.randrange(len(str(ed.text)) + 1), chars)
        await one.settled()
        await two.settled()
        for _ in range(200):
            if str(one.text) == str(two.text):
                break
            await asyncio.sleep(0.01)
        assert one.acked == two.acked == 30
        assert str(one.text) == str(two.text)
        text = str(one.text)
    assert await stored_text(collab_settings, doc["id"]) == text
    # Every typed code point is there (a combining mark may land beside another insert: random
    # positions split clusters, which is still the text typed).
    assert not Counter("".join(typed)) - Counter(text)
    assert len(text) == len("start 😀 é\u0301 ") + sum(len(c) for c in typed)


async def test_a_late_joiner_gets_the_whole_document(host: str, http: httpx.AsyncClient) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="hello")
    async with editor(host, ada, doc["id"]) as first:
        await first.type(5, ", world")
        await first.settled()
    async with editor(host, ada, doc["id"]) as late:
        assert str(late.text) == "hello, world"
    r = await http.get(f"/v1/documents/{doc['id']}/status", headers=ada.auth)
    assert r.status_code == 200 and r.json()["version"] == 1  # created at 0, one update


async def refused(host: str, path: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://{host}{path}", additional_headers=headers or {}):
            pass
    return caught.value.response.status_code


async def test_the_handshake_refuses_before_accept(host: str, http: httpx.AsyncClient) -> None:
    ada = await signup(http, "ada")
    mallory = await signup(http, "mallory")
    doc = await create_doc(http, ada, content="secret")
    assert await refused(host, f"/v1/collab/{doc['id']}") == 401
    # Another tenant's document and a missing one get the same answer.
    assert await refused(host, f"/v1/collab/{doc['id']}", mallory.auth) == 404
    missing = "00000000-0000-4000-8000-000000000000"
    assert await refused(host, f"/v1/collab/{missing}", mallory.auth) == 404
    assert await refused(host, "/v1/collab/not-a-uuid", ada.auth) == 404
    # The subprotocol form of the token, as browsers send it, is accepted and echoed.
    offered = [Subprotocol("bearer"), Subprotocol(ada.token)]
    async with connect(f"ws://{host}/v1/collab/{doc['id']}", subprotocols=offered) as ws:
        assert ws.subprotocol == "bearer"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00\x02\x05abc", 1007),  # a truncated message
        (b"\x00\x02\x03\xff\xff\xff", 1007),  # an update Yjs cannot decode
        (b"\x09", 1007),  # an unknown message type
        ("text", 1003),  # y-websocket is binary only
    ],
)
async def test_a_bad_frame_closes_the_socket_and_never_enters_the_log(
    host: str, http: httpx.AsyncClient, collab_settings: Settings, frame: bytes | str, code: int
) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="kept")
    async with connect(f"ws://{host}/v1/collab/{doc['id']}", additional_headers=ada.auth) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    keys = Keys(collab_settings.key_prefix, collab_settings.doc_shards)
    redis = Redis.from_url(collab_settings.state_url)
    try:
        assert await redis.xlen(keys.update_log(doc["id"])) == 0
    finally:
        await redis.aclose()
    assert await stored_text(collab_settings, doc["id"]) == "kept"


@asynccontextmanager
async def own_api(settings: Settings, content: str = "") -> AsyncIterator[tuple[str, User, str]]:
    """An api process of its own on `settings`: its address, a user, and that user's document."""
    async with (
        api_server(settings) as address,
        httpx.AsyncClient(base_url=f"http://{address}") as c,
    ):
        ada = await signup(c, "ada")
        doc = await create_doc(c, ada, content=content)
        yield address, ada, doc["id"]


async def test_a_frame_over_the_cap_closes_1009(collab_settings: Settings) -> None:
    small = collab_settings.model_copy(update={"collab_max_frame_bytes": 2048})
    async with (
        own_api(small) as (address, ada, doc_id),
        connect(f"ws://{address}/v1/collab/{doc_id}", additional_headers=ada.auth) as ws,
    ):
        await ws.send(b"\x00\x02" + b"\x00" * 4096)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_an_update_past_the_document_size_cap_closes_1009_and_is_not_stored(
    collab_settings: Settings,
) -> None:
    small = collab_settings.model_copy(update={"max_document_bytes": 1024})
    async with (
        own_api(small, "x" * 900) as (address, ada, doc_id),
        editor(address, ada, doc_id) as ed,
    ):
        await ed.type(0, "kept ")
        await ed.settled()
        await ed.type(0, "y" * 200)  # 900 + 5 + 200 bytes: over 1,024
        await ed.closed()
        assert ed.ws.close_code == 1009
        assert ed.ws.close_reason == "the document is at its size limit"
    assert await stored_text(small, doc_id) == "kept " + "x" * 900


async def test_the_route_is_not_served_when_co_editing_is_off(settings: Settings) -> None:
    async with api_server(settings.model_copy(update={"collab_enabled": False})) as address:
        assert await refused(address, "/v1/collab/00000000-0000-4000-8000-000000000000") in (
            403,
            404,
        )


async def test_a_refused_update_is_not_relayed_and_the_resync_resends_it(
    http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    """Over the rate, the append is refused: the update is neither stored nor relayed, the
    socket closes 1013, and on reconnect the client's step 2 carries what the server lacks."""
    slow = collab_settings.model_copy(update={"collab_update_rate": 2})
    async with api_server(slow) as address, httpx.AsyncClient(base_url=f"http://{address}") as c:
        ada = await signup(c, "ada")
        doc = await create_doc(c, ada, content="x")
        ws = await connect(f"ws://{address}/v1/collab/{doc['id']}", additional_headers=ada.auth)
        first = Editor(ws)
        await first.start()
        for chars in "abc":
            await first.type(len(str(first.text)), chars)
        await first.closed()  # the server closed the socket
        assert ws.close_code == 1013
        assert first.acked == 2 and len(first.pending) == 1
        assert await stored_text(slow, doc["id"]) == "xab"
        await asyncio.sleep(0.6)  # the rate allows one more
        ws = await connect(f"ws://{address}/v1/collab/{doc['id']}", additional_headers=ada.auth)
        again = Editor(ws)
        again.doc, again.text = first.doc, first.text  # the same client, reconnecting
        await again.start()
        for _ in range(200):
            if await stored_text(slow, doc["id"]) == "xabc":
                break
            await asyncio.sleep(0.02)
        assert await stored_text(slow, doc["id"]) == "xabc"
        await again.close()


async def test_editors_on_two_api_processes_converge(
    host: str, http: httpx.AsyncClient, collab_settings: Settings
) -> None:
    """Each api process relays what the other's sockets stored (the append script publishes on
    the document's channel); awareness crosses too."""
    async with api_server(collab_settings) as other:
        ada = await signup(http, "ada")
        doc = await create_doc(http, ada, content="two processes: ")
        async with editor(host, ada, doc["id"]) as here, editor(other, ada, doc["id"]) as there:
            for i in range(20):
                ed = here if i % 2 else there
                await ed.type(len(str(ed.text)), "xy"[i % 2])
            await here.settled()
            await there.settled()
            for _ in range(300):
                if str(here.text) == str(there.text) and len(str(here.text)) == 35:
                    break
                await asyncio.sleep(0.01)
            assert str(here.text) == str(there.text)
            assert len(str(here.text)) == len("two processes: ") + 20
            # An awareness frame from one process reaches the other's socket as sent.
            cursor = collab.encode(collab.Awareness(b"\x01\x07\x01\x02{}"))
            heard: list[bytes] = []
            there.on_other = heard.append
            await here.ws.send(cursor)
            for _ in range(200):
                if cursor in heard:
                    break
                await asyncio.sleep(0.01)
            assert cursor in heard
        assert await stored_text(collab_settings, doc["id"]) == str(here.text)


async def test_logout_closes_the_sessions_collab_sockets(
    host: str, http: httpx.AsyncClient
) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada, content="private")
    async with editor(host, ada, doc["id"]) as ed:
        r = await http.post("/v1/auth/logout", headers=ada.auth)
        assert r.status_code == 204, r.text
        await ed.closed()
        assert ed.ws.close_code == 1008
        assert ed.ws.close_reason == "logged out"


async def test_a_collab_socket_counts_as_an_editor(host: str, http: httpx.AsyncClient) -> None:
    ada = await signup(http, "ada")
    doc = await create_doc(http, ada)
    status = f"/v1/documents/{doc['id']}/status"
    async with editor(host, ada, doc["id"]):
        for _ in range(100):
            r = await http.get(status, headers=ada.auth)
            if r.json()["editors"]:
                break
            await asyncio.sleep(0.02)
        assert r.json()["editors"] == [ada.user_id]
    for _ in range(100):
        r = await http.get(status, headers=ada.auth)
        if not r.json()["editors"]:
            break
        await asyncio.sleep(0.02)
    assert r.json()["editors"] == []


async def test_a_long_document_opens_again_once_its_yjs_state_is_stored(
    host: str, http: httpx.AsyncClient
) -> None:
    """The seeded state sits in the document's hash as bytes (a 2 KB text makes bytes no UTF-8
    decoder reads): a second socket and GET still read the document."""
    ada = await signup(http, "ada")
    content = "x" * 2048
    doc = await create_doc(http, ada, content=content)
    async with editor(host, ada, doc["id"]) as one, editor(host, ada, doc["id"]) as two:
        assert str(one.text) == str(two.text) == content
    r = await http.get(f"/v1/documents/{doc['id']}", headers=ada.auth)
    assert r.status_code == 200 and r.json()["content"] == content
