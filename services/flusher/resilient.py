"""The flusher's arq Worker, made to ride out its dependencies going away and coming back.

arq 0.28's poll loop (`Worker.main` -> `_poll_iteration`) talks to the queue Redis on every
tick (ZRANGEBYSCORE, the WATCH/MULTI that claims a job, the health key, the cron enqueues) and
re-raises, through `t.result()`, any Redis error a job's own bookkeeping met (`run_job`'s
pipelines). None of that is caught: one `ConnectionError` ends `main`, and the process exits 1.
`Worker.close` has the same flaw (its first call is a DELETE on the queue Redis, so a Redis that is
down at shutdown would skip the drain).

`ResilientWorker` catches those errors around each poll iteration, backs off (capped, jittered),
logs once when the outage starts and once when it ends, and carries on; a job whose bookkeeping
failed is left to arq's own recovery (its in-progress key expires and the job runs again: every
flusher job is idempotent). Before arq starts, `wait_for_dependencies` waits (same backoff) until
the queue Redis, the state Redis and Postgres answer, so a flusher started during an outage waits
rather than crash-looping. The job functions already treat these errors as transient
(services/flusher/flush.py), so nothing here changes what a job does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from arq.worker import Worker
from redis.exceptions import RedisError

from shared.infra.clients import check_client
from shared.infra.dependencies import REDIS_FULL
from shared.settings import Settings
from shared.store import queries

log = logging.getLogger("redline.flusher")

# What a lost or restarting dependency raises (BusyLoadingError, "LOADING" while Redis replays
# its AOF, is a ConnectionError). Any RedisError: a Redis that answers OOM or READONLY is just as
# unavailable, and the loop must survive it too.
OUTAGE = (RedisError, OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Backoff:
    """Capped exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base*2^n)).
    Full jitter keeps several restarted processes from reconnecting in step; the cap bounds how
    long after a dependency's return the next try comes (recovery within `cap` + one tick)."""

    def __init__(
        self, base_s: float = 0.1, cap_s: float = 2.0, rng: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class Outage:
    """Logs once when a dependency becomes unavailable and once when it is back, with how long."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.outages = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.outages += 1
            log.warning(
                "%s unavailable (%s: %s); retrying with backoff until it is back",
                self.what,
                type(exc).__name__,
                exc,
            )

    def ok(self) -> None:
        if self.since is not None:
            log.warning("%s recovered after %.1fs", self.what, time.monotonic() - self.since)
            self.since = None


# A job run in the worker's own loop, given the worker's ctx, while the queue cannot hold jobs.
Direct = Callable[[dict[str, Any]], Awaitable[object]]


class ResilientWorker(Worker):
    """An arq Worker whose poll loop and close survive a Redis outage (see the module docs).

    `when_full=(job, every_s)`: while the queue Redis is full (at maxmemory under noeviction, as
    the state Redis is; in the shipped deployments they are one server), arq can neither enqueue
    a cron job nor start one (both are writes Redis refuses), so the crons stop; the flush is
    what must not stop (it persists acknowledged edits, and its scripts run at maxmemory:
    shared/store/lua/claim.lua), so `job` is run here directly, at most once per `every_s`.
    """

    def __init__(
        self,
        *args: Any,
        backoff: Backoff | None = None,
        when_full: tuple[Direct, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.backoff = backoff or Backoff()
        self.outage = Outage("queue Redis (job loop)")
        self._when_full = when_full
        self._direct_at = -math.inf
        self._direct_outage = 0  # the outage the last direct run was in (logged once each)
        self.direct_runs = 0

    async def _poll_iteration(self) -> None:
        while True:
            try:
                await super()._poll_iteration()
            except OUTAGE as exc:
                self.outage.failed(exc)
                if isinstance(exc, REDIS_FULL):
                    await self._run_direct()
                await asyncio.sleep(self.backoff.next_delay())
                continue
            self.outage.ok()
            self.backoff.reset()
            return

    async def _run_direct(self) -> None:
        if self._when_full is None:
            return
        job, every_s = self._when_full
        now = time.monotonic()
        if now - self._direct_at < every_s:
            return
        self._direct_at = now
        if self._direct_outage != self.outage.outages:
            self._direct_outage = self.outage.outages
            log.warning("queue Redis full: running the flush in the job loop until it is not")
        self.direct_runs += 1
        # The job catches what a dependency does to it; anything else is a bug, logged, and the
        # loop carries on as it would after a failed arq job.
        try:
            await job(self.ctx)
        except Exception:
            log.exception("direct flush failed")

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        # arq takes a job slot (its semaphore and job counter) before the Redis calls that start
        # a job and gives it back on every path but an exception: each connection reset there
        # leaked a slot, and after max_jobs of them the worker never ran a job again (crons
        # stopped; seen in tests/faults/test_proxy.py). One id at a time, so a failed start
        # gives its own slot back.
        for job_id in job_ids:
            counter = self.job_counter
            try:
                await super().start_jobs([job_id])
            except OUTAGE:
                if self.job_counter > counter and job_id.decode() not in self.tasks:
                    self.job_counter -= 1
                    self.sem.release()
                raise

    async def close(self) -> None:
        # arq's close, with the queue Redis allowed to be down: the drain (on_shutdown) needs
        # the state Redis and Postgres, not the queue, and must run either way.
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await self.pool.delete(self.health_check_key)
        except OUTAGE as exc:
            log.warning("could not clear the health key (%s); it expires by itself", exc)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        with contextlib.suppress(*OUTAGE):
            await self.pool.aclose(close_connection_pool=True)
        self._pool = None


Probe = Callable[[], Awaitable[object]]


async def wait_for(probes: dict[str, Probe], backoff: Backoff | None = None) -> None:
    """Until every probe answers: each missing dependency logged once, and once when it is back."""
    backoff = backoff or Backoff()
    outages = {name: Outage(name) for name in probes}
    while True:
        pending = False
        for name, probe in probes.items():
            try:
                await asyncio.wait_for(probe(), 3)
            except OUTAGE as exc:
                outages[name].failed(exc)
                pending = True
            else:
                outages[name].ok()
        if not pending:
            return
        await asyncio.sleep(backoff.next_delay())


async def wait_for_dependencies(settings: Settings) -> None:
    """The flusher needs the queue Redis, the state Redis and Postgres to start (its startup
    checks the Redis users and opens the pool): wait for all three instead of exiting."""

    def ping(url: str) -> Probe:
        async def probe() -> object:
            client = check_client(url, timeout_s=2)
            try:
                return await client.ping()
            finally:
                await client.aclose()

        return probe

    async def select_one() -> object:
        conn = await asyncpg.connect(settings.dsn, timeout=2)
        try:
            return await queries.ping(conn)
        finally:
            await conn.close()

    await wait_for(
        {
            "queue Redis": ping(settings.queue_url),
            "state Redis": ping(settings.state_url),
            "Postgres": select_one,
        }
    )
