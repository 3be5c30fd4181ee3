"""The flusher's resilient arq Worker (services/flusher/resilient.py), in process: its poll loop
rides out a queue Redis that refuses connections (through the fault proxy), logs the outage once
and the recovery once, and its backoff is capped and jittered."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from arq.connections import RedisSettings, create_pool
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from services.flusher.resilient import Backoff, Outage, ResilientWorker
from shared.infra.clients import reset_safe
from shared.settings import Settings
from tests.support.ci import cannot_run
from tests.support.faultproxy import FaultProxy, fault_proxy


async def _noop(ctx: dict[str, Any]) -> None:
    return None


@asynccontextmanager
async def proxied_worker(
    settings: Settings, queue: str, **options: Any
) -> AsyncIterator[tuple[FaultProxy, ResilientWorker]]:
    """A ResilientWorker (one no-op function, no signal handling) on the queue Redis through a
    fault proxy, on its own queue `queue`; closed at the end with the proxy passing again."""
    url = httpx.URL(settings.queue_url)
    assert url.host and url.port
    async with fault_proxy(url.host, url.port) as proxy:
        pool = await create_pool(RedisSettings(host="127.0.0.1", port=proxy.port, conn_retries=0))
        worker = ResilientWorker(
            [_noop],
            redis_pool=pool,
            queue_name=f"{settings.key_prefix}:{queue}",
            handle_signals=False,
            **options,
        )
        try:
            yield proxy, worker
        finally:
            proxy.set("pass")
            with contextlib.suppress(Exception):
                await worker.close()  # closes the pool too
            with contextlib.suppress(Exception):
                await pool.aclose()  # when close() could not


def test_backoff_is_jittered_under_a_doubling_cap_and_resets() -> None:
    backoff = Backoff(base_s=0.1, cap_s=2.0, rng=random.Random(3))
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    assert len(set(delays)) == len(delays)  # jittered, not in step
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    outage = Outage("queue Redis")
    with caplog.at_level(logging.WARNING, "redline.flusher"):
        outage.ok()
        for _ in range(5):
            outage.failed(ConnectionError("refused"))
        outage.ok()
        outage.ok()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("queue Redis unavailable (ConnectionError: refused)")
    assert messages[1].startswith("queue Redis recovered after")
    assert outage.outages == 1 and not outage.down


async def test_poll_loop_rides_out_a_refused_queue_redis(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with proxied_worker(
        settings,
        "resilient-test",
        poll_delay=0.01,
        backoff=Backoff(0.01, 0.05, rng=random.Random(0)),
    ) as (proxy, worker):
        await worker._poll_iteration()
        with caplog.at_level(logging.WARNING, "redline.flusher"):
            proxy.set("refuse")
            polling = asyncio.create_task(worker._poll_iteration())
            await asyncio.sleep(0.5)
            # arq's own loop would have raised ConnectionError here and ended main().
            assert not polling.done(), polling
            proxy.set("pass")
            await asyncio.wait_for(polling, 5)
        messages = [r.getMessage() for r in caplog.records if r.name == "redline.flusher"]
        assert sum("unavailable" in m for m in messages) == 1, messages
        assert sum("recovered" in m for m in messages) == 1, messages
        assert worker.backoff.attempt == 0


def test_a_write_on_a_reset_connection_is_a_redis_connection_error_under_uvloop(
    settings: Settings,
) -> None:
    """uvloop raises RuntimeError ("the handler is closed") for a write on a transport the peer
    reset; redis-py lets it through, so the api answered 500 in the proxy's reset phase. Through
    `reset_safe` it is a redis ConnectionError, which every caller treats as Redis unavailable."""
    uvloop = pytest.importorskip("uvloop")
    url = httpx.URL(settings.state_url)
    assert url.host and url.port

    async def write_after_reset(**options: Any) -> BaseException | None:
        async with fault_proxy(url.host, url.port) as proxy:  # type: ignore[arg-type]
            client = Redis.from_url(f"redis://127.0.0.1:{proxy.port}/0", **options)
            try:
                await client.ping()
                proxy.set("reset")
                proxy.set("pass")
                # One loop turn: uvloop has closed the transport, redis-py has not noticed yet.
                await asyncio.sleep(0)
                try:
                    await client.ping()
                except BaseException as exc:  # the test looks at what it was
                    return exc
                return None
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    plain = uvloop.run(write_after_reset())
    if not isinstance(plain, RuntimeError):
        cannot_run(f"this uvloop does not raise RuntimeError here (got {plain!r})")
    safe = uvloop.run(write_after_reset(**reset_safe("redis://127.0.0.1/0")))
    assert isinstance(safe, RedisConnectionError), repr(safe)


async def test_a_job_start_cut_by_a_reset_gives_its_slot_back(settings: Settings) -> None:
    """arq takes a job slot before the Redis calls that start a job; a connection error there
    used to keep it, so after max_jobs resets the worker ran nothing again."""
    async with proxied_worker(settings, "resilient-slots", max_jobs=2) as (proxy, worker):
        slots = worker.sem._value
        proxy.set("refuse")
        await worker.pool.connection_pool.disconnect()
        for _ in range(3):  # more failed starts than slots
            with pytest.raises(RedisConnectionError):
                await worker.start_jobs([b"a-job"])
        assert worker.job_counter == 0
        assert worker.sem._value == slots  # every slot back
