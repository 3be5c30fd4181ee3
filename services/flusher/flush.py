"""The write-behind engine: move dirty documents from Redis to Postgres in batches.

Protocol (docs/architecture.md, "The write-behind protocol"): claim a shard's oldest dirty ids (a
lease keeps other flushers off it), read each document's version and content atomically, write
the whole batch in one guarded statement, then mark each clean only if its version is still the
one written. Nothing here removes a dirty mark before the Postgres commit, so a crash anywhere
loses nothing.

One bad document never blocks the others: a batch that Postgres refuses for its data (a
DATA_ERRORS failure, say a NUL that reached Redis before the API refused it) is split in halves,
and the halves again, until each refused document stands alone; every other document is written,
and each refused one goes to its shard's quarantine (lua/quarantine.lua): kept in Redis, out of
the dirty index, so it is not retried in a loop. An edit accepted later takes it back out (the
next flush writes the new content); see README, write-behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.domain import collab, dirty
from shared.infra.clock import now_ms
from shared.infra.dependencies import DOWN
from shared.settings import Settings
from shared.store import queries
from shared.store.keys import Keys
from shared.store.scripts import Fold, QuarantineStatus, Scripts
from shared.store.update_log import DocRead, UpdateLog

log = logging.getLogger(__name__)

# Batches in flight at once, each on its own Postgres connection; and batches claimed per round.
# Two is enough to overlap Redis and Python work with Postgres's; more only queue on 2 cores.
PARALLEL = 2
ROUND = 4
# Documents folded between two turns of the event loop (a 2 KB one folds in ~25 us).
YIELD_EVERY = 200

# What a retry may outlive: a dependency down or restarting (DOWN), and any other refusal of
# Postgres's: a deadlock or serialization failure between flushers, a statement timeout.
TRANSIENT: tuple[type[Exception], ...] = (*DOWN, asyncpg.PostgresError)

# What no retry can fix: Postgres refused the rows themselves, and the same rows fail the same way
# every time. Class 22 (data exception: NUL 22021, untranslatable character 22P05, string too
# long 22001, invalid text representation 22P02, value out of range 22003/22008), class 23 (a
# row that breaks a constraint) and class 54 (a value over a program limit); and ValueError,
# which is asyncpg's own encoder refusing a value before sending it (a lone surrogate has no
# UTF-8 form; a malformed uuid). All but ValueError are PostgresErrors, so TRANSIENT also matches
# them: only the write path catches these first, where the rows that caused them are known.
DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    ValueError,
)


@dataclass
class FlushStats:
    batches: int = 0
    read: int = 0
    written: int = 0
    cleaned: int = 0
    seconds: float = 0.0
    failures: int = 0
    # Refused by Postgres and moved to quarantine by this call (newly or again).
    quarantined: list[str] = field(default_factory=list)
    # Of those, the ones new to the quarantine (the metric counts each document once).
    newly_quarantined: int = 0

    def add(self, other: FlushStats) -> None:
        self.batches += other.batches
        self.read += other.read
        self.written += other.written
        self.cleaned += other.cleaned
        self.failures += other.failures
        self.seconds += other.seconds
        self.quarantined += other.quarantined
        self.newly_quarantined += other.newly_quarantined


@dataclass
class _Batch:
    by_shard: dict[int, list[str]] = field(default_factory=dict)
    size: int = 0

    def add(self, shard: int, ids: list[str]) -> None:
        self.by_shard.setdefault(shard, []).extend(ids)
        self.size += len(ids)

    def split(self, size: int) -> list[_Batch]:
        """Disjoint batches of at most `size` documents, in shard order."""
        out = [_Batch()]
        for shard, ids in self.by_shard.items():
            start = 0
            while start < len(ids):
                if out[-1].size >= size:
                    out.append(_Batch())
                take = ids[start : start + size - out[-1].size]
                out[-1].add(shard, take)
                start += len(take)
        return [b for b in out if b.size]


def _id(row: queries.FlushRow) -> str:
    return row[0]


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' {code}' if code else ''}: {exc}"


def _ms_to_dt(ms: str | None) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, UTC) if ms else datetime.now(UTC)


class Flusher:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        db: asyncpg.Pool,
        scripts: Scripts,
        keys: Keys,
        updates: UpdateLog,
    ) -> None:
        self._redis = redis
        self._updates = updates
        self._log_max = settings.collab_log_max_entries
        self._db = db
        self._scripts = scripts
        self._keys = keys
        self._batch_size = settings.flush_batch_size
        self._lease_ms = settings.flush_lease_ms
        self._clean_ttl_ms = settings.clean_ttl_s * 1000
        self._retry_max_s = settings.flush_retry_max_s
        # One token per process: its own leases never block it; other processes skip its shards.
        self.token = uuid.uuid4().hex

    async def flush_dirty(
        self, until_ms: int | None = None, shards: Iterable[int] | None = None
    ) -> FlushStats:
        """One pass over every shard (or `shards`): flush what was dirty at or before `until_ms`
        (or all)."""
        stats = FlushStats()
        started = time.perf_counter()
        pending = list(range(self._keys.shards) if shards is None else shards)
        claimed: list[int] = []
        try:
            while pending:
                # A round: claim several batches' worth, then flush them PARALLEL at a time, so
                # one batch's Redis read and Python work overlap another's Postgres write. The
                # batches of a round are disjoint, and the next claim waits for the round, so
                # no document is in two batches at once.
                batch, pending = await self._claim(pending, until_ms, self._batch_size * ROUND)
                claimed.extend(s for s in batch.by_shard if s not in claimed)
                if batch.size:
                    stats.add(await self._flush_round(batch.split(self._batch_size)))
        finally:
            await self._release(claimed)
        stats.seconds = time.perf_counter() - started  # the whole pass, claims included
        return stats

    async def urgent_shards(self) -> list[int]:
        """The shards holding urgent documents: co-edited ones whose log passed a quarter of a
        cap (shared/domain/dirty.py). One round trip."""
        return await dirty.urgent_shards(self._redis, self._keys)

    async def flush_urgent(self, shards: list[int] | None = None) -> FlushStats:
        """Flush only the urgent documents (of `shards`, or of every shard holding one)."""
        shards = await self.urgent_shards() if shards is None else shards
        if not shards:
            return FlushStats()
        return await self.flush_dirty(dirty.URGENT_UNTIL_MS, shards)

    async def flush_ids(self, doc_ids: Iterable[str]) -> FlushStats:
        """Flush the named documents now, whatever the leases say (it is safe: writes are
        version-guarded and marks compare-on-version)."""
        batch = _Batch()
        for doc_id in doc_ids:
            batch.add(self._keys.shard_of(doc_id), [doc_id])
        return await self._flush(batch) if batch.size else FlushStats()

    async def flush_with_retry(self, until_ms: int | None, deadline_s: float) -> FlushStats:
        """flush_dirty, retried with capped exponential backoff until it succeeds or the deadline
        passes. The dirty marks stay on failure, so a later run picks up where this one stopped."""
        total = FlushStats()
        give_up = time.monotonic() + deadline_s
        delay = 0.1
        while True:
            try:
                total.add(await self.flush_dirty(until_ms))
                return total
            except TRANSIENT as exc:
                total.failures += 1
                left = give_up - time.monotonic()
                log.warning(
                    "flush failed (%s: %s); dirty marks kept, retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    min(delay, max(left, 0)),
                )
                if left <= 0:
                    raise
                await asyncio.sleep(min(delay, left))
                delay = min(delay * 2, self._retry_max_s)

    async def _claim(
        self, shards: list[int], until_ms: int | None, limit: int
    ) -> tuple[_Batch, list[int]]:
        """Claim up to `limit` documents across shards; return them and the shards that may
        hold more."""
        batch = _Batch()
        more: list[int] = []
        for i, shard in enumerate(shards):
            want = limit - batch.size
            if want <= 0:
                more.extend(shards[i:])
                break
            ids = await self._scripts.claim(shard, self.token, self._lease_ms, want, until_ms)
            if ids:
                batch.add(shard, ids)
            if len(ids) == want:
                more.append(shard)
        return batch, more

    async def _release(self, shards: list[int]) -> None:
        try:
            for shard in shards:
                await self._scripts.release(shard, self.token)
        except RedisError:
            log.warning("could not release flush leases; they expire in %d ms", self._lease_ms)

    async def _flush_round(self, batches: list[_Batch]) -> FlushStats:
        stats = FlushStats()
        gate = asyncio.Semaphore(PARALLEL)
        # One batch reads and folds at a time, the others write or mark clean meanwhile: a
        # pipeline. Batches that start together and read together also fold, write and mark
        # together, each waiting on the other for the same Valkey, Python and Postgres time.
        reading = asyncio.Lock()

        async def one(batch: _Batch) -> FlushStats:
            async with gate:
                return await self._flush(batch, reading)

        # Every batch runs to its end (no cancelling a sibling between its commit and its
        # mark_clean: harmless, but wasted work); then the first failure, if any, is raised.
        results = await asyncio.gather(*(one(b) for b in batches), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            stats.add(result)
        return stats

    async def _flush(self, batch: _Batch, reading: asyncio.Lock | None = None) -> FlushStats:
        stats = FlushStats(batches=1)
        started = time.perf_counter()
        async with reading or contextlib.nullcontext():
            read_ms, versions, rows, folds = await self._read(batch)
        stats.read = len(rows)
        refused: dict[str, BaseException] = {}
        conflicts: dict[str, int] = {}
        if rows:
            async with self._db.acquire() as conn:
                # In id order, so each half of a split is a contiguous run (writes lock in order).
                rows = sorted(rows, key=_id)
                stats.written = await self._write(conn, rows, refused, conflicts)
        # A row Postgres holds at a later version, or the same with other text, keeps its mark
        # (version 0): it is rebased below if Redis is behind Postgres, else the next pass
        # writes or cleans it.
        written = {d: versions[d] for d in conflicts}
        versions.update(dict.fromkeys(conflicts, 0))
        # Only now, after the commit, may a dirty mark go; and only if no edit came since. A
        # co-edited document keeps its fold in Redis first and drops the log entries the fold
        # holds (compare-on-id: entries appended meanwhile stay). A refused document keeps its
        # mark and its log until the quarantine takes it.
        stats.cleaned = await self._scripts.mark_clean_shards(
            [
                (shard, [(d, versions[d]) for d in shard_ids if d not in refused])
                for shard, shard_ids in batch.by_shard.items()
            ],
            self._clean_ttl_ms,
            read_ms,
            {d: f for d, f in folds.items() if d not in refused},
        )
        if refused:
            await self._quarantine(batch, versions, refused, stats)
        for doc_id, pg_version in conflicts.items():
            await self._rebase(doc_id, pg_version, written[doc_id])
        stats.seconds = time.perf_counter() - started
        log.debug("flushed batch: %s", stats)
        return stats

    async def _read(
        self, batch: _Batch
    ) -> tuple[int, dict[str, int], list[queries.FlushRow], dict[str, Fold]]:
        """Read the batch and fold its co-edited documents: when it was read, the version each
        document is written at (0: none, keep it dirty or drop it), its rows, and its folds."""
        ids = [doc_id for shard_ids in batch.by_shard.values() for doc_id in shard_ids]
        read_ms = now_ms()
        # One entry past the cap: a log longer than this process's cap (another process's is
        # larger) is then seen to be cut short, not taken for the whole log (`_fold`).
        docs = await self._updates.read_docs(list(batch.by_shard.values()), self._log_max + 1)
        versions: dict[str, int] = {}
        rows: list[queries.FlushRow] = []
        folds: dict[str, Fold] = {}
        for n, (doc_id, doc) in enumerate(zip(ids, docs, strict=True)):
            if n and n % YIELD_EVERY == 0:
                # Let the other batches' replies in (a commit, a mark_clean) between folds.
                await asyncio.sleep(0)
            if doc.version is None or doc.deleted:
                versions[doc_id] = 0  # gone: mark_clean drops it from the dirty index
            elif doc.snapshot is not None:
                self._fold(doc_id, doc, versions, rows, folds, self._log_max)
            elif doc.content is None:
                # A hash with a version but no content is never written; version 0 keeps it
                # dirty rather than lose it.
                versions[doc_id] = 0
            else:
                versions[doc_id] = doc.version
                rows.append(
                    (
                        doc_id,
                        doc.content,
                        doc.version,
                        doc.by or None,
                        _ms_to_dt(doc.at),
                        None,
                        None,
                    )
                )
        return read_ms, versions, rows, folds

    @staticmethod
    def _fold(
        doc_id: str,
        doc: DocRead,
        versions: dict[str, int],
        rows: list[queries.FlushRow],
        folds: dict[str, Fold],
        log_max: int,
    ) -> None:
        """A co-edited document's row, added to `rows`: its stored state with its log folded in,
        from the one snapshot read_docs took (state, log and version agree). A fold with new
        entries goes into `folds`, to keep in Redis once the row is committed. Not seeded yet:
        version 0, nothing written, the dirty mark kept.

        A log read cut short (more than `log_max` entries: an api process with a larger cap)
        does not hold the whole version: its fold is kept in Redis (it trims what it holds, so
        the next pass reads on) but no row is written and the mark stays (version 0). Writing it
        at the document's version would mark the document clean with the rest of its log
        unfolded, to expire with it."""
        snapshot = doc.snapshot
        assert snapshot is not None and doc.version is not None
        if snapshot.state is None:
            versions[doc_id] = 0
            return
        folded = collab.fold(snapshot.state, [u for _, u in snapshot.log])
        last = snapshot.log[-1][0] if snapshot.log else snapshot.folded_id
        if snapshot.log:
            folds[doc_id] = Fold(
                doc_id,
                last,
                folded.state,
                folded.text,
                sum(len(u) for _, u in snapshot.log),
                snapshot.folded_id,
            )
        if len(snapshot.log) > log_max:
            versions[doc_id] = 0
            return
        versions[doc_id] = doc.version
        rows.append(
            (
                doc_id,
                folded.text,
                doc.version,
                doc.by or None,
                _ms_to_dt(doc.at),
                folded.state,
                last,
            )
        )

    async def _rebase(self, doc_id: str, pg_version: int, written: int) -> None:
        """Postgres holds `doc_id` at `pg_version` from another history than Redis's (a state
        Redis that lost its last writes, then took new edits): move Redis's version past it,
        so the next flush writes what Redis holds (lua/rebase.lua)."""
        moved = await self._scripts.rebase(doc_id, pg_version, written)
        if moved:
            log.error(
                "document %s: Postgres holds version %d with other text than Redis's version %d"
                " (the state Redis lost writes it had flushed); Redis's version is now %d and the"
                " next flush writes it",
                doc_id,
                pg_version,
                written,
                moved,
            )

    async def _write(
        self,
        conn: queries.Conn,
        rows: list[queries.FlushRow],
        refused: dict[str, BaseException],
        conflicts: dict[str, int],
    ) -> int:
        """Write `rows` (one statement); on a data error, write each half the same way, so only
        the rows Postgres refuses stay unwritten: they go into `refused` with their error. Each
        write is its own transaction, so the others commit whatever their neighbours hold. A
        transient error propagates: the whole flush is retried, and rewriting what was already
        committed is a no-op (the version guard)."""
        try:
            return await queries.write_documents(conn, rows, conflicts)
        except DATA_ERRORS as exc:
            if len(rows) == 1:
                refused[rows[0][0]] = exc
                return 0
            log.info(
                "a batch of %d documents was refused (%s); splitting it", len(rows), _reason(exc)
            )
            half = len(rows) // 2
            return await self._write(conn, rows[:half], refused, conflicts) + await self._write(
                conn, rows[half:], refused, conflicts
            )

    async def _quarantine(
        self,
        batch: _Batch,
        versions: dict[str, int],
        refused: dict[str, BaseException],
        stats: FlushStats,
    ) -> None:
        moves = [
            (shard, [(d, versions[d]) for d in shard_ids if d in refused])
            for shard, shard_ids in batch.by_shard.items()
        ]
        outcome = await self._scripts.quarantine_shards([(s, m) for s, m in moves if m])
        for doc_id, status in outcome.items():
            reason = _reason(refused[doc_id])
            if status in (QuarantineStatus.QUARANTINED, QuarantineStatus.ALREADY):
                stats.quarantined.append(doc_id)
                stats.newly_quarantined += status is QuarantineStatus.QUARANTINED
                log.error(
                    "document %s quarantined: Postgres refused version %d (%s). It stays in"
                    " Redis, out of the flush; an accepted edit brings it back",
                    doc_id,
                    versions[doc_id],
                    reason,
                )
            elif status is QuarantineStatus.EDITED:
                log.warning(
                    "document %s: Postgres refused version %d (%s); a newer edit came meanwhile,"
                    " so it stays dirty and the next flush tries that one",
                    doc_id,
                    versions[doc_id],
                    reason,
                )

    async def quarantine_count(self) -> int:
        """How many documents are in quarantine (for the scrape-time gauge)."""
        count, _ = await dirty.quarantined(self._redis, self._keys)
        return count

    async def dirty_count(self) -> tuple[int, float | None]:
        """How many documents are dirty, and the age in seconds of the oldest (None if none)."""
        return await dirty.dirty_count(self._redis, self._keys)
