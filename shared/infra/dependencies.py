"""What "a dependency is down" means, once for every service.

These are failures of Redis or Postgres, not of the request: the api answers 503 with
Retry-After, the matcher refuses a handshake with 503 (an error frame after accept), listeners
reconnect, and the flusher retries. Nothing was applied, so nothing is lost.

A Redis that is *full* is one of them. The state Redis runs with `maxmemory-policy noeviction`
(an evicted dirty document would be a lost edit), so at `maxmemory` it refuses every command that
may grow memory with `OOM command not allowed when used memory > 'maxmemory'` (redis-py's
OutOfMemoryError) and keeps serving reads and deletes. A refused write, and a Lua script whose
first write is refused, changed nothing (Redis checks before a script's first write, never in
the middle of one), so it is answered like an outage, with its own reason (`reason`), detail and
metric label: the operator's fix is memory, not a restart.
"""

from __future__ import annotations

from typing import Literal

import asyncpg
from redis.exceptions import OutOfMemoryError, RedisError

# OSError covers ConnectionError and TimeoutError (a reset, a refused connect, a read or a
# command past its deadline) from either client, so it is in DOWN, not in either list below.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError,)

# Redis at maxmemory under noeviction: a RedisError too, so every REDIS_ERRORS handler already
# treats it as unavailable; this names it apart for answers, logs and metrics.
REDIS_FULL: tuple[type[Exception], ...] = (OutOfMemoryError,)

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

Reason = Literal["full", "down"]


def which(exc: BaseException) -> str:
    """The dependency `exc` says is down, for logs and 503 details."""
    if isinstance(exc, REDIS_ERRORS):
        return "redis"
    if isinstance(exc, (*POSTGRES_ERRORS, asyncpg.PostgresError)):  # the flusher retries any
        return "postgres"
    return "a dependency"


def reason(exc: BaseException) -> Reason:
    """Why it is unavailable: `full` (Redis at maxmemory: it still reads, refuses writes) or
    `down` (unreachable, restarting, refusing for any other reason)."""
    return "full" if isinstance(exc, REDIS_FULL) else "down"


def retry_after_s(exc: BaseException) -> int:
    """The Retry-After of a 503 for `exc`. A full Redis frees memory only as clean documents
    expire, sessions lapse or an operator raises maxmemory: a slower retry than after an outage,
    which usually ends with a restart (about a second)."""
    return 5 if isinstance(exc, REDIS_FULL) else 1


def detail(exc: BaseException) -> str:
    """The problem detail of a 503 for `exc`: what is wrong, and that a retry is the answer."""
    if isinstance(exc, REDIS_FULL):
        return "redis is full (maxmemory reached); nothing was changed, retry shortly"
    return f"{which(exc)} is unavailable; retry shortly"
