"""Names of the flusher's jobs and how the API enqueues them: the contract between the two.

A job enqueued while serving a request carries that request's id as the `request_id` keyword
argument (None outside a request), so every job function the API enqueues must be wrapped by
`traced`: it takes the id out of the arguments and makes it the current request id while the job
runs, so the worker's log lines carry the same id as the API's.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from shared.keys import Keys
from shared.logs import request_id
from shared.metrics import JobMetrics

FLUSH_DOCUMENT = "flush_document"
REQUEST_ID = "request_id"

T = TypeVar("T")


def arq_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 2
    return settings


async def enqueue(
    queue: ArqRedis, keys: Keys, function: str, *args: Any, job_id: str | None = None
) -> Job | None:
    """Enqueue `function(*args)` on Redline's queue, carrying the current request id. With a
    `job_id`, deduplicated: None while a job with that id is queued."""
    job: Job | None = await queue.enqueue_job(
        function, *args, _job_id=job_id, _queue_name=keys.queue_name, request_id=request_id.get()
    )
    return job


async def enqueue_flush(queue: ArqRedis, keys: Keys, doc_id: str) -> bool:
    """Ask for an immediate flush of one document. Deduplicated: while one such job is queued,
    another is not added (it would write the same newest state). False when deduplicated."""
    job = await enqueue(queue, keys, FLUSH_DOCUMENT, doc_id, job_id=keys.flush_job_id(doc_id))
    return job is not None


def traced(
    name: str,
) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Coroutine[Any, Any, T]]]:
    """Wrap an arq job function: take `request_id` out of its keyword arguments and make it the
    current request id while the job runs, and count its runs and failures in
    `ctx["job_metrics"]` (a JobMetrics) when the context has one."""

    def wrap(fn: Callable[..., Awaitable[T]]) -> Callable[..., Coroutine[Any, Any, T]]:
        @functools.wraps(fn)
        async def run(ctx: dict[str, Any], *args: Any, **kwargs: Any) -> T:
            # A job no request asked for (a cron tick) is traced by its arq job id instead.
            rid = kwargs.pop(REQUEST_ID, None) or ctx.get("job_id")
            token = request_id.set(rid if isinstance(rid, str) else None)
            metrics: JobMetrics | None = ctx.get("job_metrics")
            try:
                return await fn(ctx, *args, **kwargs)
            except (Exception, asyncio.CancelledError):  # cancelled: arq's job timeout
                if metrics is not None:
                    metrics.failed(name)
                raise
            finally:
                if metrics is not None:
                    metrics.ran(name)
                request_id.reset(token)

        return run

    return wrap
