"""What "a dependency is down" means, once for every service.

These are failures of Redis or Postgres, not of the request: the api answers 503 with
Retry-After, the matcher refuses a handshake with 503 (an error frame after accept), listeners
reconnect, and the flusher retries. Nothing was applied, so nothing is lost.
"""

from __future__ import annotations

import asyncpg
from redis.exceptions import RedisError

# OSError covers ConnectionError and TimeoutError (a reset, a refused connect, a read or a
# command past its deadline) from either client, so it is in DOWN, not in either list below.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError,)

POSTGRES_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    # Starting or shutting down (CannotConnectNow, AdminShutdown), a cancelled query.
    asyncpg.exceptions.OperatorInterventionError,
    # Too many connections, out of disk or memory.
    asyncpg.exceptions.InsufficientResourcesError,
    # The connection went away under a query.
    asyncpg.InterfaceError,
)

DOWN: tuple[type[Exception], ...] = (*REDIS_ERRORS, *POSTGRES_ERRORS, OSError)

# Where only Redis is touched (the cache, a pub/sub listener): its errors and the socket's.
REDIS_DOWN: tuple[type[Exception], ...] = (*REDIS_ERRORS, OSError)


def which(exc: BaseException) -> str:
    """The dependency `exc` says is down, for logs and 503 details."""
    if isinstance(exc, REDIS_ERRORS):
        return "redis"
    if isinstance(exc, POSTGRES_ERRORS):
        return "postgres"
    return "a dependency"
