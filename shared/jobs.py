"""Names of the flusher's jobs and how the API enqueues them: the contract between the two."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings

from shared.keys import Keys

FLUSH_DOCUMENT = "flush_document"


def arq_settings(url: str) -> RedisSettings:
    settings = RedisSettings.from_dsn(url)
    settings.conn_timeout = 2
    settings.conn_retries = 2
    return settings


async def enqueue_flush(queue: ArqRedis, keys: Keys, doc_id: str) -> bool:
    """Ask for an immediate flush of one document. Deduplicated: while one such job is queued,
    another is not added (it would write the same newest state). False when deduplicated."""
    job = await queue.enqueue_job(
        FLUSH_DOCUMENT, doc_id, _job_id=keys.flush_job_id(doc_id), _queue_name=keys.queue_name
    )
    return job is not None
