"""Start-up check of each service's Redis user: in production, refuse a user that can FLUSHALL.

A service needs only data commands on its own keys (deploy/redis/users.acl). A user that can wipe
the server turns one leaked password or one bad script into the loss of every unsaved edit, so with
REDLINE_ENV=production the services refuse to start with such a user, and warn otherwise.

How we ask, without ever running FLUSHALL:
1. `ACL DRYRUN <me> FLUSHALL` (Redis 7+, Valkey). A locked-down user may not run ACL commands.
2. Else queue FLUSHALL inside MULTI and DISCARD it. Redis checks ACLs when it queues a command:
   a denied command answers NOPERM, an allowed one QUEUED, and nothing queued ever runs (the
   connection is closed after the probe, which discards the transaction whatever happens).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from redis.exceptions import NoPermissionError, RedisError, ResponseError

from shared.infra.clients import check_client, check_connection_pool
from shared.settings import Settings

log = logging.getLogger(__name__)


async def _dryrun(url: str) -> bool | None:
    client = check_client(url)
    try:
        # redis-py leaves execute_command untyped; these are plain commands, replies as strings.
        me = await client.execute_command("ACL", "WHOAMI")  # type: ignore[no-untyped-call]
        reply = await client.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "DRYRUN", me, "FLUSHALL"
        )
        return bool(reply == "OK")
    except ResponseError:
        return None  # no ACL commands for this user, or a server without ACL DRYRUN
    finally:
        await client.aclose()


async def _queued(url: str) -> bool | None:
    pool = check_connection_pool(url)
    conn = await pool.get_connection()
    try:
        await conn.send_command("MULTI")
        await conn.read_response()
        await conn.send_command("FLUSHALL")
        try:
            queued = await conn.read_response()
        except NoPermissionError:
            return False
        except ResponseError as exc:
            # `rename-command FLUSHALL ""`: there is no FLUSHALL to run.
            return False if "unknown command" in str(exc).lower() else None
        finally:
            await conn.send_command("DISCARD")
            await conn.read_response()
        return bool(queued == "QUEUED")
    except ResponseError:
        return None  # MULTI itself denied: we cannot tell
    finally:
        await conn.disconnect()
        await pool.disconnect()


async def can_flushall(url: str) -> bool | None:
    """Whether the user in `url` may run FLUSHALL; None when the server will not tell."""
    found = await _dryrun(url)
    return found if found is not None else await _queued(url)


async def check_redis_users(settings: Settings, service: str, urls: Iterable[str]) -> None:
    """Refuse to start (production) or warn (otherwise) when a Redis user can FLUSHALL."""
    for url in dict.fromkeys(urls):  # each server once, in order
        try:
            allowed = await can_flushall(url)
        except (RedisError, OSError) as exc:
            # Unreachable now: the service's own retries and /readyz deal with that.
            log.warning("%s: could not check the Redis user's permissions: %s", service, exc)
            continue
        if allowed is False:
            continue
        where = url.split("@")[-1]  # never log the password
        problem = (
            f"{service}: the Redis user for {where} can run FLUSHALL"
            if allowed
            else f"{service}: could not verify that the Redis user for {where} cannot run FLUSHALL"
        )
        advice = "give each service its own ACL user without it (deploy/redis/users.acl)"
        if settings.env == "production":
            log.error("%s; refusing to start in production: %s", problem, advice)
            raise SystemExit(f"{problem}; refusing to start with REDLINE_ENV=production: {advice}")
        log.warning("%s; allowed outside production, refused with REDLINE_ENV=production", problem)


def service_urls(settings: Settings) -> list[str]:
    """The Redis URLs of every role a service may use."""
    return [
        u
        for u in (settings.state_redis_url, settings.cache_redis_url, settings.queue_redis_url)
        if u
    ]
