"""`/v1/ws/events`: document event streams and the user's inbox, pushed to a browser-like client.

The seeds' flow runs against real processes (a matcher and a flusher, the api in-process); the
protocol details against the matcher app under uvicorn in the test's loop."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from deploy.embedded import free_port
from services.flusher.saves import save_document, snapshot_document
from shared.domain.accounts import Principal
from shared.domain.documents import Documents
from shared.domain.events import job_finished
from shared.infra.clients import create_db_pool, redis_client
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts
from tests.conftest import make_settings
from tests.services.matcher.conftest import matcher_server, recv, send
from tests.support.processes import http_ready, log_ready, running, settings_env
from tests.support.users import User, add_member, create_doc, edit, signup
from tests.support.worker import worker_context

Frame = dict[str, Any]


def events_socket(url: str, user: User, query: str = "", **kwargs: Any) -> Any:
    return connect(
        f"{url}/v1/ws/events{query}",
        additional_headers={"Authorization": f"Bearer {user.token}"},
        **kwargs,
    )


async def until(
    ws: ClientConnection, match: Callable[[Frame], bool], within: float = 5.0
) -> tuple[Frame, list[Frame]]:
    """Read frames until one matches; (that frame, the ones read before it)."""
    deadline = time.monotonic() + within
    seen: list[Frame] = []
    while True:
        frame = await recv(ws, max(0.01, deadline - time.monotonic()))
        if match(frame):
            return frame, seen
        seen.append(frame)


def event(name: str, **fields: Any) -> Callable[[Frame], bool]:
    def match(frame: Frame) -> bool:
        return (
            frame["type"] == "event"
            and frame["event"] == name
            and all(frame.get(k) == v for k, v in fields.items())
        )

    return match


async def subscribe(ws: ClientConnection, doc_id: str, since: str | None = None) -> Frame:
    message: dict[str, Any] = {"type": "subscribe", "document_id": doc_id}
    if since is not None:
        message["since"] = since
    await send(ws, **message)
    frame, _ = await until(ws, lambda f: f["type"] in ("subscribed", "error"))
    return frame


async def two_editors(api: httpx.AsyncClient) -> tuple[User, User, str]:
    """alice owns a tenant, bob is its member; a tenant document both may edit."""
    alice = await signup(api, "alice")
    bob = await add_member(api, alice, "bob")
    doc = await create_doc(api, alice, title="shared")
    return alice, bob, str(doc["id"])


@pytest.fixture
async def events_url(settings: Settings) -> AsyncIterator[str]:
    async with matcher_server(settings) as url:
        yield url


# The seeds' flow ------------------------------------------------------------------------------
async def test_seeds_flow_edit_save_and_job_reach_a_subscribed_browser(
    api: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    alice, bob, doc_id = await two_editors(api)
    port = free_port()
    matcher_env = {**settings_env(settings), "REDLINE_MATCHER_PORT": str(port)}
    async with (
        running(
            "matcher",
            "services.matcher",
            matcher_env,
            tmp_path,
            http_ready(f"http://127.0.0.1:{port}/readyz"),
        ) as matcher,
        running(
            "flusher", "services.flusher", settings_env(settings), tmp_path, log_ready("ready")
        ),
        events_socket(f"ws://127.0.0.1:{port}", alice) as ws,
    ):
        subscribed = await subscribe(ws, doc_id)
        assert subscribed["type"] == "subscribed", matcher.tail()
        # Another user of the tenant edits: the first sees it, with the new version and author.
        r = await edit(api, bob, doc_id, "hello from bob")
        assert r.status_code == 202
        version = r.json()["version"]
        edited, _ = await until(ws, event("document.edited", version=version))
        assert edited["stream"] == "doc" and edited["document_id"] == doc_id
        assert edited["by"] == bob.user_id
        # The flusher persists it (its interval is 1 s in tests): saved at that version.
        saved, _ = await until(ws, event("document.saved", version=version), within=10)
        assert saved["document_id"] == doc_id
        # Save now: 202 at once, then job.completed in the requesting user's inbox.
        r = await api.post(f"/v1/documents/{doc_id}/save", headers=alice.auth)
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        done, _ = await until(ws, event("job.completed", job_id=job_id), within=10)
        assert done["stream"] == "inbox" and done["status"] == "complete"
        assert done["result"] == {"document_id": doc_id, "saved_version": version}


# Resume ---------------------------------------------------------------------------------------
async def test_resume_with_since_gets_exactly_the_missed_events(
    api: httpx.AsyncClient, events_url: str
) -> None:
    alice, bob, doc_id = await two_editors(api)
    async with events_socket(events_url, alice) as ws:
        await subscribe(ws, doc_id)
        await edit(api, bob, doc_id, "one")
        first, _ = await until(ws, event("document.edited", version=1))
    # Offline: three edits.
    for text in ("two", "three", "four"):
        assert (await edit(api, bob, doc_id, text)).status_code == 202
    async with events_socket(events_url, alice) as ws:
        await send(ws, type="subscribe", document_id=doc_id, since=first["id"])
        subscribed, missed = await until(ws, lambda f: f["type"] == "subscribed")
        assert [(f["event"], f["version"]) for f in missed] == [
            ("document.edited", 2),
            ("document.edited", 3),
            ("document.edited", 4),
        ]
        assert subscribed["last_id"] == missed[-1]["id"]
        # Then live, with nothing repeated; promptly (the reader's blocked XREAD was woken to
        # take the new stream in: its block is 5 s).
        await edit(api, bob, doc_id, "five")
        live = await recv(ws, within=1.0)
        assert (live["event"], live["version"]) == ("document.edited", 5)
        await send(ws, type="ping")
        assert (await recv(ws))["type"] == "pong"


async def test_a_since_trimmed_away_answers_reset_then_follows(
    api: httpx.AsyncClient, events_url: str, redis: Redis, settings: Settings
) -> None:
    alice, bob, doc_id = await two_editors(api)
    for i in range(5):
        await edit(api, bob, doc_id, f"v{i}")
    key = Keys(settings.key_prefix, settings.doc_shards).doc_events(doc_id)
    entries = await redis.xrange(key)
    assert len(entries) == 5
    oldest = entries[0][0]
    await redis.xtrim(key, maxlen=2, approximate=False)  # as the cap would, under more edits
    async with events_socket(events_url, alice) as ws:
        await send(ws, type="subscribe", document_id=doc_id, since=oldest)
        reset = await recv(ws)
        assert reset == {"type": "reset", "document_id": doc_id}
        subscribed = await recv(ws)
        assert subscribed["type"] == "subscribed"
        assert subscribed["last_id"] == entries[-1][0]
        await edit(api, bob, doc_id, "after the reset")
        live = await recv(ws)
        assert (live["event"], live["version"]) == ("document.edited", 6)
        # An id still in the stream resumes without a reset.
        await send(ws, type="subscribe", document_id=doc_id, since=entries[-2][0])
        again, missed = await until(ws, lambda f: f["type"] in ("subscribed", "reset"))
        assert again["type"] == "subscribed"
        assert [f["version"] for f in missed] == [5, 6]


# Access ---------------------------------------------------------------------------------------
async def test_another_tenants_document_is_refused_like_a_missing_one(
    api: httpx.AsyncClient, events_url: str
) -> None:
    alice, _, doc_id = await two_editors(api)
    mallory = await signup(api, "mallory")
    missing = str(uuid.uuid4())
    async with events_socket(events_url, mallory) as ws:
        theirs = await subscribe(ws, doc_id)
        nothing = await subscribe(ws, missing)
        garbage = await subscribe(ws, "not-a-uuid")
        assert theirs == {"type": "error", "detail": f"document {doc_id} not found"}
        assert nothing == {"type": "error", "detail": f"document {missing} not found"}
        # Not an id at all: refused by the message model, before any lookup (an error frame).
        assert garbage["type"] == "error" and "document_id" in garbage["detail"]
        # And nothing of alice's document reaches mallory.
        await edit(api, alice, doc_id, "secret")
        await send(ws, type="ping")
        assert (await recv(ws))["type"] == "pong"


async def test_a_room_member_may_subscribe_and_others_may_not(
    api: httpx.AsyncClient, events_url: str, settings: Settings
) -> None:
    alice = await signup(api, "alice")
    bob = await signup(api, "bob")
    carol = await signup(api, "carol")
    room = await _room(settings, alice, bob)
    async with events_socket(events_url, bob) as b, events_socket(events_url, carol) as c:
        assert (await subscribe(b, room))["type"] == "subscribed"
        assert (await subscribe(c, room))["type"] == "error"


async def _room(settings: Settings, a: User, b: User) -> str:
    """A room document of two users, made as the matcher makes one."""
    keys = Keys(settings.key_prefix, settings.doc_shards)
    state = redis_client(settings.state_url)
    pool = await create_db_pool(settings)
    try:
        docs = Documents(settings, state, pool, Scripts(state, keys), keys)
        who = Principal(user_id=a.user_id, tenant_id=a.tenant_id, username="a", role="owner")
        doc = await docs.create(who, "room", "", members=[a.user_id, b.user_id])
        return doc.id
    finally:
        await pool.close()
        await state.aclose()


# Flow control ---------------------------------------------------------------------------------
async def test_unsubscribe_stops_the_events(api: httpx.AsyncClient, events_url: str) -> None:
    alice, bob, doc_id = await two_editors(api)
    async with events_socket(events_url, alice) as ws:
        await subscribe(ws, doc_id)
        await send(ws, type="unsubscribe", document_id=doc_id)
        assert await recv(ws) == {"type": "unsubscribed", "document_id": doc_id}
        await edit(api, bob, doc_id, "unseen")
        await asyncio.sleep(0.2)  # time for an event to arrive, if one were (wrongly) coming
        await send(ws, type="ping")
        assert (await recv(ws))["type"] == "pong"


async def test_a_client_that_stops_reading_is_cut(
    api: httpx.AsyncClient, migrated: Any, redis: Redis
) -> None:
    settings = make_settings(migrated, ws_send_queue=4)
    alice, _, doc_id = await two_editors(api)
    key = Keys(settings.key_prefix, settings.doc_shards).doc_events(doc_id)
    async with matcher_server(settings) as url:
        http = url.replace("ws://", "http://")
        async with events_socket(url, alice, max_queue=1) as ws:
            assert (await subscribe(ws, doc_id))["type"] == "subscribed"
            # A burst of large events (a snapshot label can be long) the client does not read:
            # the socket buffers fill, then the 4-frame outbox, then the server cuts it.
            async with redis.pipeline(transaction=False) as pipe:
                for i in range(300):
                    pipe.xadd(key, {"type": "document.snapshot", "label": f"{i}" + "x" * 60_000})
                await pipe.execute()
            async with httpx.AsyncClient() as client:
                deadline = time.monotonic() + 10
                while await followed_streams(client, http) != 0:
                    assert time.monotonic() < deadline, "the slow client was not cut"
                    await asyncio.sleep(0.1)
            received = 0
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
                    received += 1
            assert received < 300


async def followed_streams(client: httpx.AsyncClient, http: str) -> int:
    metrics = (await client.get(f"{http}/metrics")).text
    line = next(x for x in metrics.splitlines() if x.startswith("redline_matcher_event_streams "))
    return int(float(line.split()[1]))


# Inbox ----------------------------------------------------------------------------------------
@pytest.fixture
async def ctx(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    async with worker_context(settings, job_try=1, job_id="rlt:job-1") as context:
        yield context


async def test_job_outcomes_wait_in_the_inbox_for_the_next_socket(
    api: httpx.AsyncClient, events_url: str, ctx: dict[str, Any], settings: Settings
) -> None:
    alice, _, doc_id = await two_editors(api)
    await edit(api, alice, doc_id, "v1")
    kw = dict(doc_id=doc_id, user_id=alice.user_id, tenant_id=alice.tenant_id)
    await save_document(ctx, **kw)
    # A job that cannot succeed tells the user too (arq marks it failed after it raises).
    assert (await api.delete(f"/v1/documents/{doc_id}", headers=alice.auth)).status_code == 204
    failing = {**ctx, "job_id": "rlt:job-2"}
    with pytest.raises(Exception, match="no longer exists"):
        await snapshot_document(failing, **kw, label="late")
    # Connected afterwards: both are still in the inbox.
    async with events_socket(events_url, alice) as ws:
        done = await recv(ws)
        failed = await recv(ws)
    assert (done["event"], done["job_id"], done["status"]) == (
        "job.completed",
        "rlt:job-1",
        "complete",
    )
    assert done["result"] == {"document_id": doc_id, "saved_version": 1}
    assert (failed["event"], failed["job_id"], failed["status"]) == (
        "job.failed",
        "rlt:job-2",
        "failed",
    )
    assert "no longer exists" in failed["error"]
    # From a cursor: only what came after it.
    async with events_socket(events_url, alice, f"?inbox_since={done['id']}") as ws:
        assert (await recv(ws))["id"] == failed["id"]
        await send(ws, type="ping")
        assert (await recv(ws))["type"] == "pong"


async def test_a_retried_job_tells_the_user_only_once_it_has_failed_for_good(
    api: httpx.AsyncClient, ctx: dict[str, Any], redis: Redis, settings: Settings
) -> None:
    from arq.worker import Retry

    alice, _, doc_id = await two_editors(api)
    inbox = Keys(settings.key_prefix, settings.doc_shards).inbox(alice.user_id)
    await ctx["db"].close()  # Postgres "away": a transient failure
    kw = dict(doc_id=doc_id, user_id=alice.user_id, tenant_id=alice.tenant_id)
    with pytest.raises(Retry):
        await save_document(ctx, **kw)
    assert await redis.xlen(inbox) == 0
    last = {**ctx, "job_try": settings.job_max_tries}
    with pytest.raises(Exception):  # noqa: B017 - whichever pool error: the last try raises it
        await save_document(last, **kw)
    [(_, fields)] = await redis.xrange(inbox)
    assert fields["type"] == "job.failed" and fields["job_id"] == "rlt:job-1"
    assert fields["error"]


# What the scripts append ----------------------------------------------------------------------
async def test_presence_snapshot_and_delete_are_appended_to_the_stream(
    api: httpx.AsyncClient, ctx: dict[str, Any], redis: Redis, settings: Settings
) -> None:
    alice, bob, doc_id = await two_editors(api)
    url = f"/v1/documents/{doc_id}"
    key = Keys(settings.key_prefix, settings.doc_shards).doc_events(doc_id)
    await api.post(f"{url}/presence", headers=alice.auth)
    await api.post(f"{url}/presence", headers=alice.auth)  # a heartbeat: no event
    await api.post(f"{url}/presence", headers=bob.auth)
    await api.delete(f"{url}/presence", headers=alice.auth)
    kw = dict(doc_id=doc_id, user_id=alice.user_id, tenant_id=alice.tenant_id)
    snap = await snapshot_document(ctx, **kw, label="draft")
    assert (await api.delete(url, headers=alice.auth)).status_code == 204
    entries = [fields for _, fields in await redis.xrange(key)]
    assert [(f["type"], f["by"], set(f["editors"].split(","))) for f in entries[:3]] == [
        ("presence.changed", alice.user_id, {alice.user_id}),
        ("presence.changed", bob.user_id, {alice.user_id, bob.user_id}),
        ("presence.changed", alice.user_id, {bob.user_id}),
    ]
    assert entries[3]["type"] == "document.snapshot"
    assert (entries[3]["label"], entries[3]["snapshot_id"]) == ("draft", str(snap["snapshot_id"]))
    assert entries[4]["type"] == "document.deleted" and entries[4]["by"] == alice.user_id
    # The stream goes with the tombstone, not forever.
    ttl = await redis.pttl(key)
    assert 0 < ttl <= settings.tombstone_ttl_s * 1000
    assert all(f["document_id"] == doc_id for f in entries)


async def test_every_event_stream_expires_when_idle(
    api: httpx.AsyncClient, redis: Redis, settings: Settings
) -> None:
    alice, _, doc_id = await two_editors(api)
    await edit(api, alice, doc_id, "x")
    key = Keys(settings.key_prefix, settings.doc_shards).doc_events(doc_id)
    ttl = await redis.pttl(key)
    assert settings.doc_events_ttl_s * 1000 - 5000 < ttl <= settings.doc_events_ttl_s * 1000
    [(_, fields)] = await redis.xrange(key)
    assert json.loads(json.dumps(fields)) == {
        "type": "document.edited",
        "document_id": doc_id,
        "version": "1",
        "by": alice.user_id,
        "at": fields["at"],
    }


async def test_one_stream_is_read_once_for_all_its_local_followers(
    api: httpx.AsyncClient, events_url: str
) -> None:
    alice, bob, doc_id = await two_editors(api)
    http = events_url.replace("ws://", "http://")
    async with (
        events_socket(events_url, alice) as a,
        events_socket(events_url, bob) as b,
        events_socket(events_url, bob) as b2,
        httpx.AsyncClient() as client,
    ):
        for ws in (a, b, b2):
            assert (await subscribe(ws, doc_id))["type"] == "subscribed"
        # One document stream and two inboxes, whatever the number of sockets.
        assert await followed_streams(client, http) == 3
        r = await edit(api, alice, doc_id, "to all")
        for ws in (a, b, b2):
            got = await recv(ws, within=1.0)
            assert (got["event"], got["version"]) == ("document.edited", r.json()["version"])


async def test_a_long_inbox_sends_its_newest_entries_without_cutting_the_socket(
    api: httpx.AsyncClient, migrated: Any, redis: Redis
) -> None:
    settings = make_settings(migrated, ws_send_queue=8)
    alice = await signup(api, "alice")
    keys = Keys(settings.key_prefix, settings.doc_shards)
    for n in range(30):  # more than the outbox holds
        await job_finished(redis, keys, settings, alice.user_id, f"job-{n}", result={"n": n})
    async with matcher_server(settings) as url, events_socket(url, alice) as ws:
        got = [await recv(ws) for _ in range(4)]  # half the outbox
        assert [f["job_id"] for f in got] == [f"job-{n}" for n in range(26, 30)]
        await send(ws, type="ping")
        assert (await recv(ws))["type"] == "pong"
