"""Start-up refusal: with REDLINE_ENV=production a service will not run with a Redis user that can
FLUSHALL (the session's Valkey has only the all-powerful default user); otherwise it warns.
The opposite case, ACL users that pass the check in production, is in test_acl.py."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from services.api.app import create_app
from services.flusher import worker
from shared.infra.permissions import _dryrun, _queued, can_flushall, service_urls
from shared.settings import Settings
from tests.conftest import Servers, make_settings


async def test_the_default_user_can_flushall_and_the_probe_runs_nothing(
    settings: Settings, redis: Redis
) -> None:
    await redis.set("rlt:keep", "1")
    assert await _dryrun(settings.state_url) is True
    assert await _queued(settings.state_url) is True
    assert await can_flushall(settings.state_url) is True
    assert await redis.get("rlt:keep") == "1", "FLUSHALL was queued, never run"
    assert await redis.ping(), "the server still answers"


async def test_api_refuses_to_start_in_production(migrated: Servers) -> None:
    app = create_app(make_settings(migrated, env="production"))
    with pytest.raises(SystemExit, match=r"api: the Redis user .* can run FLUSHALL.*production"):
        async with app.router.lifespan_context(app):
            pytest.fail("the api started")


async def test_flusher_refuses_to_start_in_production(migrated: Servers) -> None:
    ctx: dict[str, Any] = {"settings": make_settings(migrated, env="production")}
    with pytest.raises(SystemExit, match=r"flusher: the Redis user .* can run FLUSHALL"):
        await worker.startup(ctx)
    assert "state" not in ctx, "nothing was opened"


async def test_outside_production_a_service_starts_with_a_warning(
    migrated: Servers, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(migrated, env="development"))
    with caplog.at_level(logging.WARNING, logger="shared.infra.permissions"):
        async with app.router.lifespan_context(app):
            pass
    assert any("can run FLUSHALL" in r.getMessage() for r in caplog.records)


async def test_the_password_never_reaches_the_message(migrated: Servers) -> None:
    url = migrated.redis_url.replace("redis://", "redis://default:s3cret-pw@")
    app = create_app(make_settings(migrated, env="production", redis_url=url))
    with pytest.raises(SystemExit) as refused:
        async with app.router.lifespan_context(app):
            pass
    assert "s3cret-pw" not in str(refused.value)


def test_every_role_url_is_checked_once(migrated: Servers) -> None:
    settings = make_settings(migrated, cache_redis_url="redis://127.0.0.1:1/0")
    assert service_urls(settings) == [
        settings.state_url,
        "redis://127.0.0.1:1/0",
        settings.queue_url,
    ]
