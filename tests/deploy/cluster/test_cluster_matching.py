"""The matching scenarios on a real 3-master Redis Cluster, and pub/sub in cluster mode.

The matcher's tests are imported here so that they run with this folder's cluster-mode fixtures:
a pool's keys share one hash tag (`{pool:<lang>}`), so the match script runs on one node; pub/sub
goes through a plain connection to one node (redis-py's asyncio RedisCluster has no pubsub(), and
classic PUBLISH is broadcast over the whole cluster), and PUBLISH through the cluster client.
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from websockets.exceptions import ConnectionClosed

from services.api.app import create_app
from shared.domain.accounts import Accounts, token_hash
from shared.infra.clients import redis_client
from shared.settings import Settings
from shared.store.keys import Keys
from tests.services.matcher.conftest import (  # noqa: F401
    make_user,
    matcher_server,
    matcher_url,
    open_socket,
    pool,
    recv,
    recv_type,
    scripts,
)
from tests.services.matcher.test_instances import (  # noqa: F401  (collected here, in cluster mode)
    test_partner_on_another_process_is_notified,
)
from tests.services.matcher.test_observability import (  # noqa: F401
    test_metrics_count_sockets_matches_latency_and_deliveries,
)
from tests.services.matcher.test_pool import (  # noqa: F401
    test_200_concurrent_seekers_over_1000_never_double_match,
    test_largest_overlap_wins_then_longest_waiting,
)
from tests.services.matcher.test_socket import (  # noqa: F401
    test_reconnecting_partner_gets_the_result_from_the_inbox,
    test_results_published_during_a_pubsub_outage_still_arrive,
    test_two_users_are_matched_and_both_get_the_room,
)
from tests.support.users import signup

pytestmark = pytest.mark.cluster


async def test_the_pool_and_the_room_really_are_on_the_cluster(
    settings: Settings, redis: Redis, keys: Keys
) -> None:
    """Not a cluster in name only: the fixtures' client is a cluster client, and each pool's keys
    map to one slot whatever the language."""
    assert isinstance(redis, RedisCluster)
    for language in ("en", "fr", "de", "ja"):
        slots = {
            redis.keyslot(k)
            for k in (
                keys.pool_members(language),
                keys.pool_entries(language),
                keys.pool_interest(language, "chess"),
                keys.pool_claimed(language, "u1"),
            )
        }
        assert len(slots) == 1, language


async def _live(accounts: Accounts) -> None:
    for _ in range(100):
        if accounts.sessions.live:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the session revocation listener never subscribed")


async def test_session_revocations_are_heard_in_cluster_mode(settings: Settings) -> None:
    """`Accounts.listen` used to call pubsub() on the cluster client: an AttributeError that
    ended the task, leaving the session cache off for good. Now it subscribes through a plain
    node connection: a logout on one api process evicts the session cached by another."""
    one, two = create_app(settings), create_app(settings)
    async with one.router.lifespan_context(one), two.router.lifespan_context(two):
        first = httpx.AsyncClient(transport=httpx.ASGITransport(app=one), base_url="http://a")
        second = httpx.AsyncClient(transport=httpx.ASGITransport(app=two), base_url="http://b")
        async with first, second:
            accounts: Accounts = two.state.resources.accounts
            await _live(accounts)
            await _live(one.state.resources.accounts)
            alice = await signup(first, "alice")
            assert (await second.get("/v1/auth/me", headers=alice.auth)).status_code == 200
            hashed = token_hash(alice.token)
            assert accounts.sessions.get(hashed) is not None, "cached while the listener is live"
            assert (await first.post("/v1/auth/logout", headers=alice.auth)).status_code == 204
            for _ in range(50):
                if accounts.sessions.get(hashed) is None:
                    break
                await asyncio.sleep(0.02)
            assert accounts.sessions.get(hashed) is None, "the revocation reached process two"
            assert (await second.get("/v1/auth/me", headers=alice.auth)).status_code == 401


async def test_heartbeat_and_logout_on_the_cluster(
    settings: Settings, api: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis, keys: Keys
) -> None:
    """The heartbeat's cross-slot pipelines (pool refresh per language, session EXISTS per socket)
    on the cluster client: entries are extended, and a logout ends the socket."""
    fast = settings.model_copy(update={"pool_ttl_s": 3})  # the heartbeat runs every second
    ada = await make_user(api, db, "ada", ["chess"])
    bob = await make_user(api, db, "bob", ["chess"], language="fr")
    async with (
        matcher_server(fast) as url,
        open_socket(url, ada) as a,
        open_socket(url, bob) as b,
    ):
        await recv_type(a, "queued")
        await recv_type(b, "queued")
        before = await redis.zscore(keys.pool_members("en"), ada.user_id)
        await asyncio.sleep(2.2)
        after = await redis.zscore(keys.pool_members("en"), ada.user_id)
        assert before is not None and after is not None and after > before
        assert await redis.zscore(keys.pool_members("fr"), bob.user_id) is not None
        assert (await api.post("/v1/auth/logout", headers=ada.auth)).status_code == 204
        with pytest.raises(ConnectionClosed) as closed:
            await recv(a, within=5)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "session ended")
    assert await redis.zscore(keys.pool_members("en"), ada.user_id) is None


async def test_a_fresh_cluster_client_publishes_to_every_nodes_subscribers(
    settings: Settings, redis: Redis
) -> None:
    """PUBLISH as a new cluster client's first command (before it knows the slot map), heard by a
    plain subscriber on each of the three primaries: classic pub/sub is cluster-wide."""
    assert isinstance(redis, RedisCluster)
    await redis.initialize()
    subscribers = [
        Redis(host=node.host, port=node.port, decode_responses=True)
        for node in redis.get_primaries()
    ]
    assert len(subscribers) == 3
    pubsubs = [s.pubsub() for s in subscribers]
    publisher = redis_client(settings.state_url, cluster=True)
    try:
        for pubsub in pubsubs:
            await pubsub.subscribe("rl:match:user:probe")
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
        await publisher.publish("rl:match:user:probe", "hello")
        for pubsub in pubsubs:
            message = await pubsub.get_message(timeout=2)
            assert message is not None and message["data"] == "hello"
    finally:
        for pubsub in pubsubs:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        for client in (*subscribers, publisher):
            await client.aclose()
