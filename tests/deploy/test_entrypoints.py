"""The container entry points compose runs besides the services: the migrate step and the
health checks (deploy/migrate.py, deploy/healthcheck.py), against the session's real servers."""

from __future__ import annotations

import os
import subprocess
import sys

from redis.asyncio import Redis

from deploy import healthcheck
from deploy.embedded import free_port
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import ROOT, Servers


def run_module(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("REDLINE_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_applies_nothing_twice_and_exits_zero(migrated: Servers) -> None:
    done = run_module("deploy.migrate", env={"REDLINE_DATABASE_URL": migrated.database_url})
    assert done.returncode == 0, done.stderr
    assert "migrations: up to date" in done.stdout


def test_migrate_without_a_database_url_says_so() -> None:
    done = run_module("deploy.migrate", env={})
    assert done.returncode != 0
    assert "REDLINE_DATABASE_URL is not set" in done.stderr


async def test_flusher_health_follows_the_workers_health_key(
    settings: Settings, redis: Redis
) -> None:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    assert await healthcheck.flusher_ok(settings) is False
    await redis.set(keys.flusher_health, "j_complete=0", px=5000)
    assert await healthcheck.flusher_ok(settings) is True


async def test_flusher_health_is_false_when_redis_is_unreachable(settings: Settings) -> None:
    down = settings.model_copy(update={"queue_redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    assert await healthcheck.flusher_ok(down) is False


def test_http_health_is_false_when_nothing_listens() -> None:
    assert healthcheck.http_ok(free_port(), "/readyz") is False


def test_healthcheck_rejects_an_unknown_service() -> None:
    assert healthcheck.main(["worker"]) == 2
