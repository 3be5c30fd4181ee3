"""The match socket against a real uvicorn server, real Valkey and real Postgres."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from deploy.embedded import free_port
from services.matcher.messages import Delivery, MatchFound
from services.matcher.pool import Pool, PoolEntry
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.services.matcher.conftest import (
    make_user,
    matcher_server,
    open_socket,
    recv,
    recv_type,
    scrape,
    send,
)


async def test_two_users_are_matched_and_both_get_the_room(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    ada = await make_user(api, db, "ada", ["chess", "go", "jazz"])
    bob = await make_user(api, db, "bob", ["jazz", "go", "tennis"])
    eve = await make_user(api, db, "eve", ["jazz"])
    async with open_socket(matcher_url, ada) as a, open_socket(matcher_url, bob) as b:
        queued = await recv_type(a, "queued")
        assert queued["language"] == "en" and queued["interests"] == ["chess", "go", "jazz"]
        await recv_type(b, "queued")
        await send(b, type="find_match")
        mine = await recv_type(b, "match_found")
        theirs = await recv_type(a, "match_found")
    assert mine["partner_id"] == ada.user_id and theirs["partner_id"] == bob.user_id
    assert mine["room_id"] == theirs["room_id"] == mine["document_id"] == theirs["document_id"]
    assert sorted(mine["shared_interests"]) == sorted(theirs["shared_interests"]) == ["go", "jazz"]
    # The room is a document both partners may open, and nobody else learns it exists.
    doc = mine["document_id"]
    for user, status in ((ada, 200), (bob, 200), (eve, 404)):
        r = await api.get(f"/v1/documents/{doc}", headers=user.auth)
        assert r.status_code == status, (user, r.text)
    # Today's trending counts each shared interest once for this match (counted just after the
    # results are sent, so give it a moment).
    day = datetime.now(UTC).date()
    for _ in range(40):
        if await redis.zscore(keys.trending(day), "go") is not None:
            break
        await asyncio.sleep(0.05)
    assert await redis.zscore(keys.trending(day), "jazz") == 1
    assert await redis.zscore(keys.trending(day), "go") == 1
    assert await redis.zscore(keys.trending(day), "chess") is None
    # Both left the pool (and, disconnected, stay out of it).
    assert await redis.zcard(keys.pool_members("en")) == 0


async def test_no_match_keeps_the_seeker_in_the_pool_until_disconnect(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    ada = await make_user(api, db, "ada", ["chess"], language="fr")
    bob = await make_user(api, db, "bob", ["tennis"], language="fr")
    cat = await make_user(api, db, "cat", ["chess"], language="de")
    async with open_socket(matcher_url, ada) as a, open_socket(matcher_url, bob) as b:
        await recv_type(a, "queued")
        await recv_type(b, "queued")
        async with open_socket(matcher_url, cat) as c:
            await recv_type(c, "queued")
            # Shares an interest with ada, but speaks another language: another pool.
            await send(c, type="find_match")
            await recv_type(c, "no_match_found")
        await send(a, type="find_match")
        await recv_type(a, "no_match_found")
        assert await redis.zscore(keys.pool_members("fr"), ada.user_id) is not None
        assert await redis.zscore(keys.pool_interest("fr", "chess"), ada.user_id) is not None
        # Interests in the request replace the profile's: now ada meets bob.
        await send(a, type="find_match", interests=["tennis"])
        found = await recv_type(a, "match_found")
        assert found["partner_id"] == bob.user_id and found["shared_interests"] == ["tennis"]
        await recv_type(b, "match_found")
    assert await redis.zcard(keys.pool_members("fr")) == 0
    assert await redis.zcard(keys.pool_members("de")) == 0


async def test_cancel_leaves_the_pool_and_find_match_reenters(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    async with open_socket(matcher_url, ada) as a:
        await recv_type(a, "queued")
        await send(a, type="cancel")
        await recv_type(a, "cancelled")
        assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None
        assert await redis.zcard(keys.pool_interest("en", "chess")) == 0
        await send(a, type="find_match")
        await recv_type(a, "no_match_found")
        assert await redis.zscore(keys.pool_members("en"), ada.user_id) is not None
        await send(a, type="ping")
        await recv_type(a, "pong")


async def test_a_find_match_that_crossed_its_match_found_matches_nobody_else(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    """Every client sends find_match on `queued`; a loaded client's (or network's) may reach the
    server only after someone else's search has claimed that user and delivered the result. That
    find_match must not start a second search: the user is matched once."""
    ada = await make_user(api, db, "ada", ["chess", "go"])
    bob = await make_user(api, db, "bob", ["chess", "go"])
    cat = await make_user(api, db, "cat", ["go"])
    async with open_socket(matcher_url, cat) as c, open_socket(matcher_url, ada) as a:
        await recv_type(c, "queued")
        await recv_type(a, "queued")
        async with open_socket(matcher_url, bob) as b:
            await recv_type(b, "queued")
            await send(b, type="find_match")
            mine = await recv_type(b, "match_found")
        theirs = await recv_type(a, "match_found")
        assert mine["partner_id"] == ada.user_id and theirs["partner_id"] == bob.user_id
        # Only now does ada's find_match arrive (after her match was delivered to her session).
        await send(a, type="find_match")
        await send(a, type="ping")
        # Frames on one socket keep their order: a second match would come before the pong.
        await recv_type(a, "pong")
        await send(c, type="ping")
        await recv_type(c, "pong")
        # Cat, who shares `go` with ada, is still waiting and was claimed by nobody.
        assert await redis.zscore(keys.pool_members("en"), cat.user_id) is not None
        assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None
    assert await db.fetchval("SELECT count(*) FROM documents") == 1


async def test_a_user_matched_on_one_socket_leaves_the_pool_on_the_others(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    """Ada has two match sockets (two tabs). Bob's search matches her through one; the other
    shows the match too and leaves the pool, so its heartbeat does not put her back and Cat
    (who shares her interest) finds nobody instead of matching her a second time."""
    settings = make_settings(migrated, pool_ttl_s=3)  # a pool heartbeat every second
    ada = await make_user(api, db, "ada", ["chess"])
    bob = await make_user(api, db, "bob", ["chess"])
    cat = await make_user(api, db, "cat", ["chess"])
    async with (
        matcher_server(settings) as url,
        open_socket(url, ada) as a1,
        open_socket(url, ada) as a2,
    ):
        await recv_type(a1, "queued")
        await recv_type(a2, "queued")
        async with open_socket(url, bob) as b:
            await recv_type(b, "queued")
            await send(b, type="find_match")
            assert (await recv_type(b, "match_found"))["partner_id"] == ada.user_id
        await recv_type(a1, "match_found")
        await recv_type(a2, "match_found")
        await asyncio.sleep(1.5)  # a heartbeat that would re-enter a socket still in the pool
        assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None
        async with open_socket(url, cat) as c:
            await recv_type(c, "queued")
            await send(c, type="find_match")
            await recv_type(c, "no_match_found")


async def test_bad_messages_get_error_frames_not_a_closed_socket(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    async with open_socket(matcher_url, ada) as a:
        await recv_type(a, "queued")
        for bad in (
            "not json",
            '{"type": "dance"}',
            '{"type": "find_match", "interests": ["A B"]}',
        ):
            await a.send(bad)
            assert (await recv_type(a, "error"))["detail"].startswith("invalid message")
        await a.send(b"\x00binary")
        await recv_type(a, "error")
        await send(a, type="ping")
        await recv_type(a, "pong")


async def test_reconnecting_partner_gets_the_result_from_the_inbox(
    matcher_url: str,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
    pool: Pool,
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    bob = await make_user(api, db, "bob", ["chess"])
    # Ada's socket dropped a moment ago; her entry (refreshed until then) is still in the pool.
    await pool.enter("en", PoolEntry(ada.user_id, "gone-socket", interests=("chess",)))
    async with open_socket(matcher_url, bob) as b:
        await recv_type(b, "queued")
        await send(b, type="find_match")
        found = await recv_type(b, "match_found")
    assert found["partner_id"] == ada.user_id
    assert await redis.xlen(keys.inbox(ada.user_id)) == 1
    assert 0 < await redis.pttl(keys.inbox(ada.user_id)) <= 60_000
    async with open_socket(matcher_url, ada) as a:
        waiting = await recv_type(a, "match_found")
        assert waiting["document_id"] == found["document_id"]
        assert waiting["partner_id"] == bob.user_id
        # Delivered, so it stops waiting; and a matched user does not re-enter the pool by
        # reconnecting (the next frame is the pong, not `queued`).
        await send(a, type="ping")
        await recv_type(a, "pong")
    assert await redis.xlen(keys.inbox(ada.user_id)) == 0
    assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None


async def test_rate_limit_answers_rate_limited_with_retry_after(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    settings = make_settings(migrated, match_rate=3, match_period_s=60)
    ada = await make_user(api, db, "ada", ["chess"])
    async with matcher_server(settings) as url, open_socket(url, ada) as a:
        await recv_type(a, "queued")
        for _ in range(3):
            await send(a, type="find_match")
            await recv_type(a, "no_match_found")
        await send(a, type="find_match")
        limited = await recv_type(a, "rate_limited")
        # One attempt every 20 s comes back.
        assert 1 <= limited["retry_after"] <= 20


# Handshake -------------------------------------------------------------------------------------
async def test_missing_or_unknown_token_is_refused_before_accept(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with open_socket(matcher_url, None):
            pass
    assert refused.value.response.status_code == 401
    assert b"Bearer" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        async with open_socket(matcher_url, None, subprotocols=["bearer", "not-a-token"]):
            pass
    assert refused.value.response.status_code == 401


async def test_bearer_subprotocol_authenticates_browsers(
    matcher_url: str, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    async with open_socket(matcher_url, None, subprotocols=["bearer", ada.token]) as a:
        assert a.subprotocol == "bearer"
        await recv_type(a, "queued")


async def test_origin_allowlist(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    settings = make_settings(migrated, allowed_origins="https://app.example, http://localhost:3000")
    assert settings.allowed_origins == ("https://app.example", "http://localhost:3000")
    ada = await make_user(api, db, "ada", ["chess"])
    async with matcher_server(settings) as url:
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(url, ada, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        for origin in ("https://app.example", None):
            async with open_socket(url, ada, origin=origin) as a:
                await recv_type(a, "queued")


async def test_oversize_frame_closes_with_1009(
    matcher_url: str, settings: Settings, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    async with open_socket(matcher_url, ada, max_size=None) as a:
        await recv_type(a, "queued")
        await a.send('{"type": "ping", "pad": "' + "x" * settings.ws_max_message_bytes + '"}')
        with pytest.raises(ConnectionClosed) as closed:
            await recv(a)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_idle_socket_is_closed(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    settings = make_settings(migrated, ws_idle_timeout_s=0.5)
    ada = await make_user(api, db, "ada", ["chess"])
    async with matcher_server(settings) as url, open_socket(url, ada) as a:
        await recv_type(a, "queued")
        with pytest.raises(ConnectionClosed) as closed:
            await recv(a, within=5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "idle timeout")
        await asyncio.sleep(0.1)
    assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None


async def test_a_client_that_stops_reading_is_cut_off(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    settings = make_settings(migrated, ws_send_queue=4)
    ada = await make_user(api, db, "ada", ["chess"])
    big = MatchFound(room_id="r", partner_id="x" * 60_000, document_id="d", shared_interests=[])
    flood = Delivery(frame=big).model_dump_json()
    async with matcher_server(settings) as url:
        http = url.replace("ws://", "http://")
        # max_queue=1: the client stops reading its socket after one frame, like a stuck tab.
        async with open_socket(url, ada, max_queue=1) as a:
            await recv_type(a, "queued")
            async with httpx.AsyncClient() as client:
                sockets = "redline_matcher_open_sockets"
                assert await scrape(client, http, sockets) == 1
                # Results pour in faster than it reads: buffers fill, then its bounded queue.
                for _ in range(400):
                    await redis.publish(keys.match_channel(ada.user_id), flood)
                for _ in range(100):
                    if await scrape(client, http, sockets) == 0:
                        break
                    await asyncio.sleep(0.1)
                assert await scrape(client, http, sockets) == 0
                slow = "redline_matcher_slow_client_disconnects_total"
                assert await scrape(client, http, slow) == 1
                assert await scrape(client, http, "redline_matcher_delivery_drops_total") >= 1
    assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None


async def test_heartbeat_keeps_a_waiting_socket_in_the_pool(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    # A 3 s TTL refreshed every second: the entry must outlive several TTLs while connected.
    settings = make_settings(migrated, pool_ttl_s=3)
    ada = await make_user(api, db, "ada", ["chess"])
    async with matcher_server(settings) as url, open_socket(url, ada) as a:
        await recv_type(a, "queued")
        first = await redis.zscore(keys.pool_members("en"), ada.user_id)
        assert first is not None
        await asyncio.sleep(4)
        later = await redis.zscore(keys.pool_members("en"), ada.user_id)
        assert later is not None and later > first
        # An entry lost meanwhile (say, pruned while Redis was unreachable) is put back.
        await redis.delete(keys.pool_members("en"), keys.pool_entries("en"))
        await asyncio.sleep(1.5)
        assert await redis.zscore(keys.pool_members("en"), ada.user_id) is not None
        assert await redis.zscore(keys.pool_interest("en", "chess"), ada.user_id) is not None


async def test_a_failed_room_puts_the_seeker_back_in_the_pool(
    matcher_url: str,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis: Redis,
    keys: Keys,
    pool: Pool,
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    # A pool entry of a user who no longer exists in Postgres: the room cannot list them.
    deleted = "00000000-0000-4000-8000-000000000000"
    await pool.enter("en", PoolEntry(deleted, "their-socket", interests=("chess",)))
    async with redis.pubsub() as ps:
        await ps.subscribe(keys.match_channel(deleted))
        async with open_socket(matcher_url, ada) as a:
            await recv_type(a, "queued")
            await send(a, type="find_match")
            # The claim happened, the room failed: the seeker hears so and waits in the pool again.
            assert (await recv_type(a, "queued"))["interests"] == ["chess"]
            assert "back in the pool" in (await recv_type(a, "error"))["detail"]
            assert await redis.zscore(keys.pool_members("en"), ada.user_id) is not None
            # The claimed partner's sockets are told to re-enter the pool, not left out of it.
            for _ in range(20):
                message = await ps.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    break
            assert message is not None
            delivery = Delivery.model_validate_json(message["data"])
            assert delivery.requeue and delivery.ticket == "their-socket" and delivery.frame is None
    assert await db.fetchval("SELECT count(*) FROM documents") == 0


async def test_results_published_during_a_pubsub_outage_still_arrive(
    settings: Settings,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
    redis: Redis,
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    bob = await make_user(api, db, "bob", ["chess"])
    async with (
        matcher_server(settings) as url_a,
        matcher_server(settings) as url_b,
        open_socket(url_a, ada) as a,
        open_socket(url_b, bob) as b,
    ):
        await recv_type(a, "queued")
        await recv_type(b, "queued")
        # Every matcher's pub/sub connection drops; the match is published while ada's process
        # is reconnecting, so pub/sub alone would lose it.
        assert await redis.client_kill_filter(_type="pubsub") >= 2
        await send(b, type="find_match")
        mine = await recv_type(b, "match_found")
        theirs = await recv_type(a, "match_found", within=10)
        assert theirs["document_id"] == mine["document_id"]
        assert theirs["partner_id"] == bob.user_id


async def test_logging_out_ends_the_socket(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    settings = make_settings(migrated, pool_ttl_s=3)  # sessions checked every second
    ada = await make_user(api, db, "ada", ["chess"])
    async with matcher_server(settings) as url, open_socket(url, ada) as a:
        await recv_type(a, "queued")
        r = await api.post("/v1/auth/logout", headers=ada.auth)
        assert r.status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            await recv(a, within=5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "session ended")
    assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None


async def test_a_down_database_refuses_the_handshake_with_503(
    migrated: Servers, api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    ada = await make_user(api, db, "ada", ["chess"])
    # Nothing listens there: the session resolves (Redis), the profile cannot be read.
    dead = f"postgresql://redline@127.0.0.1:{free_port()}/redline"
    settings = make_settings(migrated, database_url=dead, db_pool_min=0)
    async with matcher_server(settings) as url:
        with pytest.raises(InvalidStatus) as refused:
            async with open_socket(url, ada):
                pass
    response = refused.value.response
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.body)["detail"].endswith("is unavailable; retry shortly")
