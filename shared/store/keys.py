"""Every Redis key and channel name Redline uses is built here, and nowhere else.

Keys that one Lua script touches together share a hash tag, so each script runs unchanged on
Redis Cluster: a document's keys and its shard's indexes carry the tag `{s<shard>}`.
"""

from __future__ import annotations

import hashlib
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

    def quarantine(self, shard: int) -> str:
        """Sorted set of a shard's documents Postgres refused to store (a data error, e.g. a NUL
        in old content), scored by when each was first quarantined (ms). Out of the dirty index,
        so never retried in a loop; their hashes stay in Redis. Same tag as `dirty`: one script
        moves an id from one to the other."""
        return f"{self._tag(shard)}:quarantine"

    def presence(self, shard: int) -> str:
        """Sorted set of a shard's documents with editors, scored by the latest expiry (ms)."""
        return f"{self._tag(shard)}:presence"

    def flush_lease(self, shard: int) -> str:
        return f"{self._tag(shard)}:flushing"

    def replica_mark(self) -> str:
        """A throwaway write after a co-edited document's edit, so that a WAIT on the mark's
        connection covers that edit (WAIT counts only its own connection's writes, and the
        replication stream is in order). Not on Redis Cluster (the replica wait is refused
        there)."""
        return f"{self.prefix}:replica-mark"

    def edit_rate(self, doc_id: str, user_id: str) -> str:
        """GCRA state of one user's edits to one document (in the document's slot: the edit
        script checks it in the same call)."""
        return f"{self._tag(self.shard_of(doc_id))}:doc:{doc_id}:rate:{user_id}"

    def doc_events(self, doc_id: str) -> str:
        """Capped stream of the document's events (edited, presence, saved, snapshot, deleted),
        in its slot so the edit, presence, mark-clean and delete scripts append atomically."""
        return f"{self._tag(self.shard_of(doc_id))}:doc:{doc_id}:events"

    def update_log(self, doc_id: str) -> str:
        """Stream of a co-edited document's Yjs updates not yet folded into its stored state
        (field `u` the update, `o` its origin); never capped: the flusher trims what it folded
        (shared/store/lua/collab_append.lua; the trim is mark_clean.lua's)."""
        return f"{self._tag(self.shard_of(doc_id))}:doc:{doc_id}:y"

    def awareness(self, doc_id: str) -> str:
        """Hash of a co-edited document's awareness states (cursors, names) by Yjs client id:
        "<clock> <expiry ms> <origin> <state JSON>", capped and expiring, never persisted
        (shared/store/lua/awareness_set.lua, awareness_clear.lua)."""
        return f"{self._tag(self.shard_of(doc_id))}:doc:{doc_id}:aw"

    def collab_channel(self, doc_id: str) -> str:
        """Pub/sub channel of a co-edited document: each appended update ("<origin> <log id>
        <update>") and awareness frame ("<origin> a <frame>"), heard by every api process with
        a socket on the document."""
        return f"{self.prefix}:collab:{doc_id}"

    def doc_dirty(self, doc_id: str) -> str:
        return self.dirty(self.shard_of(doc_id))

    def doc_quarantine(self, doc_id: str) -> str:
        return self.quarantine(self.shard_of(doc_id))

    def doc_presence(self, doc_id: str) -> str:
        return self.presence(self.shard_of(doc_id))

    # Accounts ---------------------------------------------------------------------------
    def session(self, token_hash: str) -> str:
        return f"{self.prefix}:session:{token_hash}"

    @property
    def sessions_revoked(self) -> str:
        """Pub/sub channel: the hash of each ended session, so API processes drop cached ones."""
        return f"{self.prefix}:sessions:revoked"

    def rate_limit(self, policy: str, subject: str) -> str:
        return f"{self.prefix}:ratelimit:{policy}:{subject}"

    def login_known(self, username: str) -> str:
        """Sorted set of the addresses that logged into `username` (lower case) successfully,
        scored by when each stops counting as known (ms); services/api/ratelimit.py."""
        return f"{self.prefix}:login:known:{username}"

    # Trending (state Redis) ----------------------------------------------------------------
    def trending(self, day: date) -> str:
        """Sorted set of interest slugs scored by that UTC day's matches; expires after 2 days."""
        return f"{self.prefix}:trending:{day.isoformat()}"

    # Cache (cache Redis) ----------------------------------------------------------------
    # A cached entry, its loader lease and its generation share one tag, so the fill and
    # invalidate scripts touch them in one call; the ready channel wakes waiting readers.
    def cache_entry(self, family: str, item: str) -> str:
        return f"{self.prefix}:cache:{{{family}:{item}}}"

    def cache_lease(self, family: str, item: str) -> str:
        return f"{self.prefix}:cache:{{{family}:{item}}}:lease"

    def cache_gen(self, family: str, item: str) -> str:
        return f"{self.prefix}:cache:{{{family}:{item}}}:gen"

    def cache_ready(self, family: str, item: str) -> str:
        return f"{self.prefix}:cache-ready:{family}:{item}"

    @property
    def cache_ready_pattern(self) -> str:
        """PSUBSCRIBE pattern of every ready channel (the prefix has no glob characters)."""
        return f"{self.prefix}:cache-ready:*"

    # Matcher (state Redis) --------------------------------------------------------------
    # Every key of one language's pool carries the tag `{pool:<lang>}`: the match script
    # touches them together on one node.
    def _pool(self, language: str) -> str:
        return f"{self.prefix}:{{pool:{language}}}"

    def pool_members(self, language: str) -> str:
        """Sorted set of the pool's users, scored by when their entry expires (ms)."""
        return f"{self._pool(language)}:members"

    def pool_entries(self, language: str) -> str:
        """Hash of user -> entry (ticket, joined ms, region, wanted region, interests)."""
        return f"{self._pool(language)}:entries"

    def pool_interest_prefix(self, language: str) -> str:
        """Prefix of the per-interest indexes; the match script appends an interest slug."""
        return f"{self._pool(language)}:interest:"

    def pool_interest(self, language: str, slug: str) -> str:
        """Sorted set of the pool's users who share `slug`, scored by when they joined (ms)."""
        return self.pool_interest_prefix(language) + slug

    def pool_claimed_prefix(self, language: str) -> str:
        """Prefix of the short-lived markers naming the ticket a match claimed."""
        return f"{self._pool(language)}:claimed:"

    def pool_claimed(self, language: str, user_id: str) -> str:
        return self.pool_claimed_prefix(language) + user_id

    def match_channel(self, user_id: str) -> str:
        """Pub/sub channel of one user's match results, heard by whichever process holds them."""
        return f"{self.prefix}:match:user:{user_id}"

    def inbox(self, user_id: str) -> str:
        """Capped stream of results waiting for a user who may be reconnecting (60 s): each
        entry's field `d` is a `services.matcher.messages.Delivery` in JSON; deleted once
        delivered."""
        return f"{self.prefix}:inbox:{user_id}"

    def user_sockets(self, user_id: str) -> str:
        """Sorted set of a user's open matcher sockets on every process (member: a socket id),
        scored by when each entry lapses unrenewed (ms): the per-user socket cap counts it."""
        return f"{self.prefix}:sockets:user:{user_id}"

    def events_wake(self, process: str) -> str:
        """A matcher process's own stream, written to wake its blocked event reader when the set
        of streams it follows changes (it reads this key in the same XREAD)."""
        return f"{self.prefix}:events:wake:{process}"

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

    def save_job_id(self, doc_id: str, version: int, user_id: str) -> str:
        """A "save now" job: one per document version and user, so a repeated request while the
        first is pending (or already done at that version) gets the same job."""
        return f"{self.prefix}:save:{doc_id}:v{version}:{user_id}"

    def snapshot_job_id(self, doc_id: str, version: int, user_id: str, label: str) -> str:
        digest = hashlib.sha256(label.encode()).hexdigest()[:16]
        return f"{self.prefix}:snapshot:{doc_id}:v{version}:{user_id}:{digest}"
