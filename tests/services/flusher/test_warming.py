"""The profile warming job: preloads recently seen users' profiles through the cache module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from deploy.embedded import free_port
from services.flusher import worker
from services.flusher.warming import warm_profiles
from shared.domain.models import Profile
from shared.infra.cache import Entry
from shared.store import queries
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.support.apps import api_app, resources
from tests.support.users import signup
from tests.support.worker import worker_context


@pytest.fixture
async def warm_ctx(migrated: Servers) -> AsyncIterator[dict[str, Any]]:
    async with worker_context(make_settings(migrated, warm_limit=2)) as context:
        yield context


async def test_warming_preloads_the_most_recently_seen(
    warm_ctx: dict[str, Any], db: asyncpg.Connection, redis: Redis
) -> None:
    settings = warm_ctx["settings"]
    keys = Keys(settings.key_prefix, settings.doc_shards)
    async with api_app(settings) as (app, api):
        users = [await signup(api, name) for name in ("old", "recent", "newest")]
        await api.patch("/v1/users/me/profile", json={"bio": "hi"}, headers=users[2].auth)
        for age, user in zip((3, 2, 1), users, strict=True):
            await db.execute(
                "UPDATE users SET last_seen_at = now() - make_interval(hours => $2) WHERE id = $1",
                user.user_id,
                age,
            )

        assert await warm_profiles(warm_ctx) == 2
        cached = [await redis.get(keys.cache_entry("profile", u.user_id)) for u in users]
        assert cached[0] is None
        payload = Entry.parse(cached[2]).payload
        assert payload is not None and Profile.model_validate_json(payload).bio == "hi"
        assert await warm_profiles(warm_ctx) == 0, "already cached: nothing to do"

        # The api's first read of a warmed profile is a hit: no Postgres load.
        r = await api.get(f"/v1/users/{users[1].user_id}/profile", headers=users[0].auth)
        assert r.status_code == 200
        stats = resources(app).profiles.cache.stats.of("profile")
        assert (stats.hits, stats.loads) == (1, 0)


def test_warming_is_a_cron_job_on_its_setting(migrated: Servers) -> None:
    settings = make_settings(migrated, warm_interval_s=120)
    w = worker.create_worker(settings)
    jobs = {job.name: job for job in w.cron_jobs}
    assert "cron:warm_profiles" in jobs
    assert jobs["cron:warm_profiles"].minute == set(range(0, 60, 2))


async def test_warming_with_the_cache_redis_down_reports_zero(migrated: Servers) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with worker_context(make_settings(migrated, cache_redis_url=dead)) as context:
        await queries.insert_tenant(context["db"], "00000000-0000-4000-8000-000000000001", "t")
        await queries.insert_user(
            context["db"],
            "00000000-0000-4000-8000-000000000002",
            "00000000-0000-4000-8000-000000000001",
            "alice",
            "x",
            "owner",
        )
        assert await warm_profiles(context) == 0
