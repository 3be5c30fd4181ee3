"""The flusher's job context: the dict arq hands every job, startup and shutdown (`Ctx`), and the
one owner of the clients startup opens in it (`clients`, closed by `close_clients`)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

# Keys startup sets: settings, registry, flush_metrics, job_metrics, dependency_metrics, keys,
# state, db, scripts, flusher, cache_redis, profiles, probe_server; arq adds redis, job_id,
# job_try, ...
Ctx = dict[str, Any]

_CLIENTS = "clients"


def clients(ctx: Ctx) -> AsyncExitStack:
    """What owns the worker's clients (and its probe server): each is pushed here as it is opened,
    so whatever startup got to open, even if it failed half-way, is closed, in reverse order."""
    stack = ctx.get(_CLIENTS)
    if stack is None:
        stack = ctx[_CLIENTS] = AsyncExitStack()
    assert isinstance(stack, AsyncExitStack)
    return stack


async def close_clients(ctx: Ctx) -> None:
    """Close everything `clients(ctx)` holds, newest first; each once (a second call: nothing)."""
    stack = ctx.pop(_CLIENTS, None)
    if stack is not None:
        await stack.aclose()
