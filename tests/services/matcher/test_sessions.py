"""A socket lives no longer than its session, on every matcher process: a logout (heard by
pub/sub) or an expiry (a per-session deadline, re-checked with PTTL) ends the session's match
and events sockets within a second; revocations missed while the subscription was down are
caught by checking every session then."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, cast

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect

from services.matcher.connection import Connection
from services.matcher.pool import PoolEntry
from services.matcher.sessions import SessionWatch
from shared.domain.accounts import Principal, token_hash
from shared.settings import Settings
from shared.store.keys import Keys
from tests.services.matcher.conftest import make_user, matcher_server, open_socket, recv_type
from tests.support.users import User

ENDED = (1008, "session ended")


def events_socket(url: str, user: User) -> Any:
    return connect(
        f"{url}/v1/ws/events", additional_headers={"Authorization": f"Bearer {user.token}"}
    )


async def until(check: Callable[[], Awaitable[bool]], within: float) -> None:
    """Poll `check` until it holds; fail once `within` seconds have passed."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not within {within} s"
        await asyncio.sleep(0.02)


def close_of(ws: ClientConnection) -> tuple[int, str] | None:
    rcvd = ws.protocol.close_rcvd
    return None if rcvd is None else (rcvd.code, rcvd.reason)


async def all_ended(sockets: list[ClientConnection]) -> bool:
    return all(close_of(ws) is not None for ws in sockets)


@pytest.fixture
async def four_sockets(
    request: pytest.FixtureRequest,
    settings: Settings,
    api: httpx.AsyncClient,
    db: asyncpg.Connection,
) -> AsyncIterator[tuple[User, list[ClientConnection]]]:
    """Two matcher app instances, each holding a match and an events socket of ada's session.
    Default settings otherwise: the old session poll (every pool_ttl_s / 3 = 40 s) is far off.
    (`settings` is the cluster's in test_sessions_cluster.py.)"""
    overrides: dict[str, Any] = getattr(request, "param", {})
    settings = settings.model_copy(update=overrides)
    ada = await make_user(api, db, "ada", ["chess"])
    async with AsyncExitStack() as stack:
        sockets: list[ClientConnection] = []
        for _ in range(2):
            url = await stack.enter_async_context(matcher_server(settings))
            match = await stack.enter_async_context(open_socket(url, ada))
            await recv_type(match, "queued")
            events = await stack.enter_async_context(events_socket(url, ada))
            await _pong(events)
            sockets += [match, events]
        yield ada, sockets


async def _pong(ws: ClientConnection) -> None:
    await ws.send('{"type": "ping"}')
    await recv_type(ws, "pong")


async def test_logout_ends_the_sessions_sockets_on_every_process_within_a_second(
    api: httpx.AsyncClient, four_sockets: tuple[User, list[ClientConnection]]
) -> None:
    ada, sockets = four_sockets
    r = await api.post("/v1/auth/logout", headers=ada.auth)
    assert r.status_code == 204
    await until(lambda: all_ended(sockets), within=1.0)
    assert [close_of(ws) for ws in sockets] == [ENDED] * 4


async def test_another_session_of_the_user_is_untouched(
    api: httpx.AsyncClient, four_sockets: tuple[User, list[ClientConnection]]
) -> None:
    ada, sockets = four_sockets
    # A second session of ada's (another device), with a socket of its own.
    r = await api.post("/v1/auth/login", json={"username": "ada", "password": "correct horse"})
    assert r.status_code == 200, r.text
    other = User(ada.user_id, ada.tenant_id, r.json()["token"])
    url = str(sockets[0].request.headers["Host"]) if sockets[0].request else ""
    async with events_socket(f"ws://{url}", other) as theirs:
        await _pong(theirs)
        assert (await api.post("/v1/auth/logout", headers=other.auth)).status_code == 204
        await until(lambda: all_ended([theirs]), within=1.0)
        assert close_of(theirs) == ENDED
    # The revocation was heard (its socket ended); the first session's sockets carry on.
    for ws in sockets:
        assert close_of(ws) is None
    for ws in sockets[1::2]:
        await _pong(ws)


@pytest.mark.parametrize("four_sockets", [{"ws_session_check_s": 0.5}], indirect=True)
async def test_an_expired_session_ends_its_sockets(
    redis: Redis, keys: Keys, four_sockets: tuple[User, list[ClientConnection]]
) -> None:
    ada, sockets = four_sockets
    # Shortened behind the matchers' backs (their known expiry is two weeks off): found by the
    # next check (at most ws_session_check_s), which learns the new expiry and acts on it.
    assert await redis.pexpire(keys.session(token_hash(ada.token)), 300)
    await until(lambda: all_ended(sockets), within=0.5 + 0.3 + 1.0)
    assert [close_of(ws) for ws in sockets] == [ENDED] * 4


async def test_a_revocation_missed_while_unsubscribed_still_ends_the_sockets(
    redis: Redis, keys: Keys, four_sockets: tuple[User, list[ClientConnection]]
) -> None:
    ada, sockets = four_sockets
    # Every pub/sub connection drops; the session then goes without a word on the channel
    # (as a logout published during the outage would): found by checking every session.
    assert await redis.client_kill_filter(_type="pubsub") >= 2
    assert await redis.delete(keys.session(token_hash(ada.token))) == 1
    await until(lambda: all_ended(sockets), within=2.5)
    assert [close_of(ws) for ws in sockets] == [ENDED] * 4


# The deadline logic on its own, against the real Redis --------------------------------------
def _conn(session: str) -> Connection:
    """A socket's bookkeeping without a socket: the watch only reads `session` and calls `cut`."""
    who = Principal(user_id="u", tenant_id="t", username="u", role="owner")
    return Connection(cast(WebSocket, None), who, "", PoolEntry("u", ""), 4, _no_ack, session)


async def _no_ack(user_id: str, inbox_id: str) -> None:
    return None


@pytest.fixture
async def watch(redis: Redis, keys: Keys) -> AsyncIterator[SessionWatch]:
    w = SessionWatch(redis, keys, check_s=3600)  # no backstop: deadlines alone
    w.set_live(True)
    await w.start()
    yield w
    await w.stop()


async def test_a_session_is_ended_at_its_expiry_and_kept_when_it_slid(
    redis: Redis, keys: Keys, watch: SessionWatch, settings: Settings
) -> None:
    expiring, sliding = keys.session("a" * 64), keys.session("b" * 64)
    await redis.set(expiring, "{}", px=400)
    await redis.set(sliding, "{}", px=400)
    gone, kept = _conn(expiring), _conn(sliding)
    watch.add(gone)
    watch.add(kept)

    async def learned() -> bool:  # the first check (at once) read both expiries
        return all(k in watch._next and watch._next[k] > 1 for k in (expiring, sliding))

    await until(learned, within=1.0)
    first = watch._next[sliding]
    assert await redis.pexpire(sliding, 60_000)  # resolved elsewhere: slid forward
    await until(lambda: _true(gone.close_with == ENDED), within=0.4 + 1.0)
    # The slid one was looked at again at its old expiry, found alive, and rescheduled.
    await until(lambda: _true(watch._next.get(sliding, 0) > first + 30), within=1.0)
    assert kept.close_with is None
    assert len(watch) == 1


async def _true(value: bool) -> bool:
    return value
