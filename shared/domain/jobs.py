"""Names of the flusher's jobs, how the API enqueues them and reads their state: the contract
between the two. Jobs receive ids, never objects: the worker loads what it needs.

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
from arq.jobs import Job, JobStatus

from shared.domain.accounts import Principal
from shared.domain.documents import Documents
from shared.domain.models import JobOut, JobState
from shared.infra.logs import request_id
from shared.infra.metrics import JobMetrics
from shared.settings import is_sentinel_url, parse_sentinel_url
from shared.store.keys import Keys

FLUSH_DOCUMENT = "flush_document"
SAVE_DOCUMENT = "save_document"
SNAPSHOT_DOCUMENT = "snapshot_document"
REQUEST_ID = "request_id"

T = TypeVar("T")


def arq_settings(url: str) -> RedisSettings:
    """arq's connection settings for the queue URL; a sentinel URL gives arq's own Sentinel mode
    (its client asks the sentinels for the primary at every connect)."""
    if is_sentinel_url(url):
        address = parse_sentinel_url(url)
        settings = RedisSettings(
            host=address.sentinels,
            sentinel=True,
            sentinel_master=address.master,
            database=address.db,
            username=address.username,
            password=address.password,
            ssl=address.tls,
        )
    else:
        settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 2
    return settings


async def enqueue(
    queue: ArqRedis,
    keys: Keys,
    function: str,
    *args: Any,
    job_id: str | None = None,
    **kwargs: Any,
) -> Job | None:
    """Enqueue `function(*args, **kwargs)` on Redline's queue, carrying the current request id.
    With a `job_id`, deduplicated: None while a job with that id is queued."""
    job: Job | None = await queue.enqueue_job(
        function,
        *args,
        _job_id=job_id,
        _queue_name=keys.queue_name,
        request_id=request_id.get(),
        **kwargs,
    )
    return job


async def enqueue_flush(queue: ArqRedis, keys: Keys, doc_id: str) -> bool:
    """Ask for an immediate flush of one document. Deduplicated: while one such job is queued,
    another is not added (it would write the same newest state). False when deduplicated."""
    job = await enqueue(queue, keys, FLUSH_DOCUMENT, doc_id, job_id=keys.flush_job_id(doc_id))
    return job is not None


async def _enqueue(queue: ArqRedis, keys: Keys, job_id: str, function: str, **kw: Any) -> str:
    # arq refuses a second job with an id whose job or result key exists, so the same request
    # while the first is pending (or done at this version) names the same job: idempotent.
    await enqueue(queue, keys, function, job_id=job_id, **kw)
    return job_id


async def enqueue_save(
    queue: ArqRedis, keys: Keys, who: Principal, doc_id: str, version: int
) -> str:
    return await _enqueue(
        queue,
        keys,
        keys.save_job_id(doc_id, version, who.user_id),
        SAVE_DOCUMENT,
        doc_id=doc_id,
        user_id=who.user_id,
        tenant_id=who.tenant_id,
    )


async def enqueue_snapshot(
    queue: ArqRedis, keys: Keys, who: Principal, doc_id: str, version: int, label: str
) -> str:
    return await _enqueue(
        queue,
        keys,
        keys.snapshot_job_id(doc_id, version, who.user_id, label),
        SNAPSHOT_DOCUMENT,
        doc_id=doc_id,
        user_id=who.user_id,
        tenant_id=who.tenant_id,
        label=label,
    )


_STATES: dict[JobStatus, JobState] = {
    JobStatus.deferred: "queued",  # a retry waiting out its backoff is still queued to a user
    JobStatus.queued: "queued",
    JobStatus.in_progress: "in_progress",
    JobStatus.complete: "complete",
    JobStatus.not_found: "not_found",
}


def _state(status: JobStatus) -> JobState:
    return _STATES[status]


async def job_state(
    queue: ArqRedis, keys: Keys, documents: Documents, who: Principal, job_id: str
) -> JobOut:
    """A job's state for whoever may read its document, by the one document access rule
    (`Documents.readable`): a room document's jobs for its members only, a tenant document's for
    its tenant. The user who asked for the job also sees how it ended once the document is gone
    (a snapshot of a document deleted meanwhile ends `failed`, and says why): they could read it
    when they asked, and a document's grants never widen. Anyone else's view of a job, an
    unknown job and an expired result all read as not_found: a job id leaks nothing.
    """
    missing = JobOut(job_id=job_id, status="not_found")
    job = Job(job_id, queue, _queue_name=keys.queue_name)
    status = await job.status()
    if status is JobStatus.not_found:
        return missing
    info = await job.info()
    if info is None:  # finished and expired between the two reads
        return missing
    # Not the enqueuer's user or tenant: who enqueued a job says nothing about who may read
    # the document now (a room document has no tenant; a member may since have left).
    doc_id = info.kwargs.get("doc_id")
    if not isinstance(doc_id, str):
        return missing
    if who.user_id != info.kwargs.get("user_id") and not await documents.readable(who, doc_id):
        return missing
    result = await job.result_info() if status is JobStatus.complete else None
    if result is None:
        return JobOut(job_id=job_id, status=_state(status))
    if result.success:
        body = result.result if isinstance(result.result, dict) else {"value": result.result}
        return JobOut(job_id=job_id, status="complete", result=body)
    return JobOut(job_id=job_id, status="failed", error=_reason(result.result))


def _reason(exc: object) -> str:
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc)


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
