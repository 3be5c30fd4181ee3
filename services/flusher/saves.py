"""Jobs a user asks for through the API: save a document now, and store a named snapshot.

Both are idempotent, because arq runs a job at least once (a worker that dies mid-job leaves it
to be run again): a save flushes whatever is newest, a snapshot is stored once per job id.
A transient failure (Postgres or Redis away) is retried with backoff; on the last try the real
error is raised, so the job ends `failed` with a reason the user can read. A data error (Postgres
refuses the content itself) fails the job at once: the same content fails the same way again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq.worker import Retry

from services.flusher.context import Ctx
from services.flusher.flush import DATA_ERRORS, TRANSIENT, Flusher
from shared.domain import collab, events, snapshots
from shared.domain.errors import NotFound
from shared.domain.jobs import SAVE_DOCUMENT, SNAPSHOT_DOCUMENT, traced
from shared.settings import Settings
from shared.store import queries
from shared.store.keys import Keys
from shared.store.update_log import UpdateLog

log = logging.getLogger("redline.flusher")


class Unsaveable(Exception):
    """The document's current content is one Postgres refuses: it is in quarantine."""


def _last_try(ctx: Ctx) -> bool:
    settings: Settings = ctx["settings"]
    return int(ctx.get("job_try", 1)) >= settings.job_max_tries


def _reason(exc: BaseException) -> str:
    # The same wording GET /v1/jobs/{id} shows (shared/domain/jobs.py).
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _tell(ctx: Ctx, user_id: str, **outcome: Any) -> None:
    """The job's outcome to the requesting user's inbox; best effort (Redis may be the reason
    the job failed): the result in arq stays the record, GET /v1/jobs/{id} reads it."""
    try:
        await events.job_finished(
            ctx["state"], ctx["keys"], ctx["settings"], user_id, str(ctx.get("job_id")), **outcome
        )
    except Exception as exc:
        log.warning("job %s: could not write its inbox event: %s", ctx.get("job_id"), exc)


async def _run(
    ctx: Ctx, user_id: str, work: Callable[[], Awaitable[dict[str, Any]]]
) -> dict[str, Any]:
    """Run a job's work, then tell the user: `job.completed`, or `job.failed` once no retry is
    left (arq records the failure only after we raise, so the event is written first)."""
    try:
        result = await work()
    except (*DATA_ERRORS, Unsaveable) as exc:
        # Before TRANSIENT, which holds the Postgres data errors too: no retry can help.
        await _tell(ctx, user_id, error=_reason(exc))
        raise
    except TRANSIENT as exc:
        if _last_try(ctx):
            await _tell(ctx, user_id, error=_reason(exc))
        raise _retry_or_raise(ctx, exc) from exc
    except Exception as exc:
        await _tell(ctx, user_id, error=_reason(exc))
        raise
    await _tell(ctx, user_id, result=result)
    return result


def _retry_or_raise(ctx: Ctx, exc: Exception) -> Retry:
    job_try: int = ctx.get("job_try", 1)
    if _last_try(ctx):
        raise exc
    log.warning(
        "job %s try %d failed (%s: %s); retrying",
        ctx.get("job_id"),
        job_try,
        type(exc).__name__,
        exc,
    )
    return Retry(defer=min(0.2 * 2**job_try, ctx["settings"].flush_retry_max_s))


async def _saved_version(ctx: Ctx, doc_id: str) -> int:
    async with ctx["db"].acquire() as conn:
        row = await queries.document(conn, doc_id)
    if row is None:
        raise NotFound(f"document {doc_id} no longer exists")
    return int(row["version"])


@traced(SAVE_DOCUMENT)
async def save_document(ctx: Ctx, *, doc_id: str, user_id: str, tenant_id: str) -> dict[str, Any]:
    flusher: Flusher = ctx["flusher"]

    async def work() -> dict[str, Any]:
        stats = await flusher.flush_ids([doc_id])
        if doc_id in stats.quarantined:
            raise Unsaveable(
                f"document {doc_id} cannot be saved: Postgres refuses its current content; it is"
                " kept unsaved until an edit replaces it"
            )
        saved = await _saved_version(ctx, doc_id)
        log.info("saved document %s at version %d for %s", doc_id, saved, user_id)
        return {"document_id": doc_id, "saved_version": saved}

    return await _run(ctx, user_id, work)


async def _current(ctx: Ctx, doc_id: str) -> tuple[str, int]:
    """The newest content and version: Redis first (it may be ahead of Postgres), then Postgres."""
    keys: Keys = ctx["keys"]
    content, version, deleted, unfolded = await ctx["state"].hmget(
        keys.doc(doc_id), ["c", "v", "del", "yb"]
    )
    if deleted is not None:
        raise NotFound(f"document {doc_id} no longer exists")
    if unfolded not in (None, "0"):
        # Co-edited, with updates the flusher has not folded yet: fold them here (one script
        # read, so the text and the version agree).
        updates: UpdateLog = ctx["updates"]
        snap = await updates.read(doc_id, ctx["settings"].collab_log_max_entries)
        if snap.version is not None and snap.state is not None:
            return collab.fold(snap.state, [u for _, u in snap.log]).text, snap.version
    if content is not None and version is not None:
        return content, int(version)
    async with ctx["db"].acquire() as conn:
        row = await queries.document(conn, doc_id)
    if row is None:
        raise NotFound(f"document {doc_id} no longer exists")
    return row["content"], int(row["version"])


@traced(SNAPSHOT_DOCUMENT)
async def snapshot_document(
    ctx: Ctx, *, doc_id: str, user_id: str, tenant_id: str, label: str
) -> dict[str, Any]:

    async def work() -> dict[str, Any]:
        content, version = await _current(ctx, doc_id)
        async with ctx["db"].acquire() as conn:
            snapshot_id = await snapshots.insert(
                conn, doc_id, label, content, version, user_id, ctx["job_id"]
            )
        log.info("snapshot %r of document %s at version %d", label, doc_id, version)
        # A retried job (at-least-once) may append this event twice; the snapshot is stored once.
        fields: dict[str, str | int] = {"type": "document.snapshot", "version": version}
        fields["by"] = user_id
        fields |= {"label": label, "snapshot_id": str(snapshot_id)}
        await events.to_document(ctx["state"], ctx["keys"], ctx["settings"], doc_id, fields)
        return {
            "snapshot_id": snapshot_id,
            "document_id": doc_id,
            "version": version,
            "label": label,
        }

    return await _run(ctx, user_id, work)
