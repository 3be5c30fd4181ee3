"""Every Redis key and channel name Redline uses is built here, and nowhere else.

Keys that one Lua script touches together share a hash tag, so each script runs unchanged on
Redis Cluster: a document's keys and its shard's indexes carry the tag `{s<shard>}`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str
    shards: int

    def shard_of(self, doc_id: str) -> int:
        # crc32, not hash(): it must agree across processes and restarts.
        return zlib.crc32(doc_id.encode()) % self.shards

    def _tag(self, shard: int) -> str:
        return f"{self.prefix}:{{s{shard}}}"

    # Documents (state Redis) --------------------------------------------------------------
    def doc(self, doc_id: str) -> str:
        return f"{self._tag(self.shard_of(doc_id))}:doc:{doc_id}"

    def editors(self, doc_id: str) -> str:
        return f"{self._tag(self.shard_of(doc_id))}:doc:{doc_id}:editors"

    def dirty(self, shard: int) -> str:
        """Sorted set of a shard's dirty document ids, scored by first-dirty time (ms)."""
        return f"{self._tag(shard)}:dirty"

    def presence(self, shard: int) -> str:
        """Sorted set of a shard's documents with editors, scored by the latest expiry (ms)."""
        return f"{self._tag(shard)}:presence"

    def flush_lease(self, shard: int) -> str:
        return f"{self._tag(shard)}:flushing"

    def doc_dirty(self, doc_id: str) -> str:
        return self.dirty(self.shard_of(doc_id))

    def doc_presence(self, doc_id: str) -> str:
        return self.presence(self.shard_of(doc_id))

    # Accounts ---------------------------------------------------------------------------
    def session(self, token_hash: str) -> str:
        return f"{self.prefix}:session:{token_hash}"

    def rate_limit(self, policy: str, subject: str) -> str:
        return f"{self.prefix}:ratelimit:{policy}:{subject}"

    # Trending (state Redis) ----------------------------------------------------------------
    def trending(self, day: date) -> str:
        """Sorted set of interest slugs scored by that UTC day's matches; expires after 2 days."""
        return f"{self.prefix}:trending:{day.isoformat()}"

    # Cache (cache Redis) ----------------------------------------------------------------

    # Matcher (state Redis) --------------------------------------------------------------

    # Queue (queue Redis, arq) -----------------------------------------------------------
    @property
    def queue_name(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def flusher_health(self) -> str:
        """arq's health-check key of the flusher workers (read by deploy/healthcheck.py)."""
        return f"{self.prefix}:flusher:health"

    def flush_job_id(self, doc_id: str) -> str:
        """Deduplicated arq job id for the immediate flush of one document."""
        return f"{self.prefix}:flush:{doc_id}"
