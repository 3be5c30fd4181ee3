"""The state Valkey full: `maxmemory` reached under `noeviction` (issue 13's memory row).

A private Valkey (AOF, noeviction, as deploy/embedded.py and deploy/redis/state.conf run it),
the real api and flusher processes on it (queue and state on one server, as `make run` and
compose have them), and the cap set at run time with CONFIG SET below what the server already
holds. Redis then refuses every write that may grow memory (`OOM command not allowed ...`) and
still serves reads and deletes. Expected: edits, signups and logins answer 503 with Retry-After
and a problem+json that says Redis is full (never a 500, never a false 202); reads of open
documents still work; the flusher keeps persisting the dirty documents to Postgres (its scripts
run at maxmemory, and with the queue full it runs the flush in its job loop) and keeps running;
once memory is back the edit succeeds, and every acknowledged edit is in Postgres.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from shared.store.keys import Keys
from tests.conftest import Servers
from tests.support.faults import (
    Ledger,
    account,
    dirty,
    report,
    stack,
    stack_settings,
    state_valkey,
    stored,
    team,
    until,
)
from tests.support.metrics import sample

pytestmark = pytest.mark.slow

PAD = "p" * 65_536


async def _fill(client: Redis) -> int:
    """Fill the server: a cap 2 MB above what it holds, 64 KB keys until it refuses one, then the
    cap 1 MB below what it holds, so that no freed client buffer lets a write slip in. The cap."""
    used = int((await client.info("memory"))["used_memory"])
    await client.config_set("maxmemory", used + 2_000_000)
    with pytest.raises(OutOfMemoryError):
        for i in range(1000):
            await client.set(f"test:pad:{i}", PAD)
    cap = int((await client.info("memory"))["used_memory"]) - 1_000_000
    await client.config_set("maxmemory", cap)
    return cap


def _is_full_problem(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == "5"
    body = r.json()
    assert body["status"] == 503 and body["title"] == "Service Unavailable"
    assert "redis is full" in body["detail"], body


async def test_full_state_valkey_refuses_writes_with_503_and_loses_nothing(
    migrated: Servers, tmp_path: Path
) -> None:
    async with state_valkey(tmp_path / "valkey", aof=True) as valkey:
        admin = Redis.from_url(valkey.url, decode_responses=True)
        try:
            assert (await admin.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"
            settings = stack_settings(migrated, valkey.url)
            async with stack(settings, tmp_path) as s:
                users, doc_ids = await team(s.client, docs=6)
                owner = users[0]
                ledger = Ledger()
                # The flusher paused while the edits land and the server fills: every edited
                # document is still dirty when Redis becomes full.
                s.flusher.send(signal.SIGSTOP)
                for round_ in range(3):
                    for doc_id in doc_ids:
                        content = f"edit {round_} of {doc_id}"
                        r = await s.client.put(
                            f"/v1/documents/{doc_id}/content",
                            json={"content": content},
                            headers=owner.auth,
                        )
                        assert r.status_code == 202, r.text
                        ledger.acks[doc_id].append((r.json()["version"], content))
                await _fill(admin)
                assert await dirty(valkey.url, s.keys) == len(doc_ids)

                # Writes: 503, Redis full, through both doors of the edit and the account routes.
                refusals = 0
                for doc_id in doc_ids[:2]:
                    for spelled in (doc_id, doc_id.upper()):  # the lane, the documented route
                        r = await s.client.put(
                            f"/v1/documents/{spelled}/content",
                            json={"content": "not acknowledged"},
                            headers=owner.auth,
                        )
                        _is_full_problem(r)
                        refusals += 1
                for path in ("/v1/auth/signup", "/v1/auth/login"):
                    r = await s.client.post(
                        path, json={"username": "owner", "password": "correct horse"}
                    )
                    _is_full_problem(r)
                    refusals += 1
                # Reads of what Redis holds still work, and say what was acknowledged last.
                for doc_id in doc_ids:
                    r = await s.client.get(f"/v1/documents/{doc_id}", headers=owner.auth)
                    assert r.status_code == 200, r.text
                    assert r.json()["content"] == ledger.acks[doc_id][-1][1]
                metrics = (await s.client.get("/metrics")).text
                counted = sample(
                    metrics,
                    "redline_dependency_unavailable_total",
                    dependency="redis",
                    reason="full",
                )
                assert counted == refusals, metrics

                # The flusher, resumed into a full Redis, persists every dirty document.
                s.flusher.send(signal.SIGCONT)

                async def persisted() -> bool:
                    rows = await stored(settings.dsn, doc_ids)
                    return all(rows[d][0] == ledger.highest(d) for d in doc_ids)

                took = await until("the flusher to persist into Postgres", 20, persisted, 0.2)
                await until("every dirty mark gone", 10, lambda: _no_dirty(valkey.url, s.keys))
                rows = await stored(settings.dsn, doc_ids)
                assert all(rows[d][1] == ledger.acks[d][-1][1] for d in doc_ids)
                assert s.flusher.alive, s.flusher.tail()
                r = await s.client.put(
                    f"/v1/documents/{doc_ids[0]}/content",
                    json={"content": "still full"},
                    headers=owner.auth,
                )
                _is_full_problem(r)
                assert "queue Redis full: running the flush in the job loop" in s.flusher.log()

                # Memory back (no cap): the edit goes through, and lands in Postgres.
                await admin.config_set("maxmemory", 0)
                r = await s.client.put(
                    f"/v1/documents/{doc_ids[0]}/content",
                    json={"content": "after the cap"},
                    headers=owner.auth,
                )
                assert r.status_code == 202, r.text
                ledger.acks[doc_ids[0]].append((r.json()["version"], "after the cap"))
                acc = await account(s, owner, ledger)
                assert acc.lost == 0, acc
                assert s.flusher.alive and s.api.alive
                report(
                    "state Valkey at maxmemory (noeviction)",
                    1,
                    {"while full (every document dirty)", "after the cap is lifted"},
                    acc,
                    f"{took:.2f} s to persist while full",
                )
        finally:
            await admin.aclose()


async def _no_dirty(url: str, keys: Keys) -> bool:
    return await dirty(url, keys) == 0
