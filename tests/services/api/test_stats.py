"""GET /v1/stats/cache: counters, the cache Redis's numbers, dirty documents, queue depth, and
the status the thresholds give."""

from __future__ import annotations

from redis.asyncio import Redis

from shared.domain.jobs import enqueue_flush
from tests.conftest import Servers, make_settings
from tests.support.apps import api_app, resources
from tests.support.users import create_doc, edit, signup


async def test_stats_report_cache_dirty_and_queue_with_thresholds(migrated: Servers) -> None:
    settings = make_settings(migrated, stats_max_queue_depth=0, stats_max_dirty_age_s=3600)
    async with api_app(settings) as (app, api):
        alice = await signup(api, "alice")
        assert (await api.get("/v1/stats/cache")).status_code == 401
        s = (await api.get("/v1/stats/cache", headers=alice.auth)).json()
        assert s["status"] == "healthy", s["warnings"]
        assert s["hit_rate"] is None and s["dirty_documents"] == 0 and s["queue_depth"] == 0
        assert s["cache_redis"]["up"] is True and s["cache_redis"]["used_memory_bytes"] > 0
        assert s["cache_redis"]["connected_clients"] >= 1 and s["cache_listener"] is True

        url = f"/v1/users/{alice.user_id}/profile"
        for _ in range(4):
            assert (await api.get(url, headers=alice.auth)).status_code == 200
        doc = await create_doc(api, alice)
        assert (await edit(api, alice, doc["id"], "dirty now")).status_code == 202
        await enqueue_flush(resources(app).queue, resources(app).keys, doc["id"])

        s = (await api.get("/v1/stats/cache", headers=alice.auth)).json()
        assert s["families"]["profile"]["hits"] == 3
        assert s["families"]["profile"]["misses"] == 1
        assert s["hit_rate"] == 0.75
        assert s["dirty_documents"] == 1 and 0 <= s["oldest_dirty_age_s"] < 60
        assert s["queue_depth"] == 1
        assert s["status"] == "warning"
        assert s["warnings"] == ["job queue deeper than 0"]


async def test_stats_say_when_the_state_redis_is_full_or_may_evict(
    migrated: Servers, redis: Redis
) -> None:
    """A full state Redis refuses edits (503): the operator's page says so, and says when its
    eviction policy could drop unsaved documents. (The test Valkey is the state Redis; its
    settings are put back.)"""
    settings = make_settings(migrated)
    async with api_app(settings) as (_, api):
        alice = await signup(api, "alice")
        s = (await api.get("/v1/stats/cache", headers=alice.auth)).json()
        assert s["state_redis"]["up"] is True and s["state_redis"]["used_memory_bytes"] > 0
        assert s["state_redis"]["maxmemory_policy"] == "noeviction"
        assert not [w for w in s["warnings"] if w.startswith("state Redis")]
        try:
            await redis.config_set("maxmemory", 1)  # below what it holds: full (noeviction)
            full = (await api.get("/v1/stats/cache", headers=alice.auth)).json()
            await redis.config_set("maxmemory", 0)
            # A policy that evicts (with no cap set, nothing is evicted during the test).
            await redis.config_set("maxmemory-policy", "allkeys-lru")
            evicting = (await api.get("/v1/stats/cache", headers=alice.auth)).json()
        finally:
            await redis.config_set("maxmemory-policy", "noeviction")
            await redis.config_set("maxmemory", 0)
        for s, want in (
            (full, "state Redis full (maxmemory reached): edits answer 503"),
            (evicting, "state Redis maxmemory-policy is allkeys-lru: it may evict"),
        ):
            assert s["status"] == "warning"
            state = [w for w in s["warnings"] if w.startswith("state Redis")]
            assert len(state) == 1 and state[0].startswith(want), s["warnings"]
