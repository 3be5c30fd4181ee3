"""The profile-read scenario: Redline's cached profile reads against its document read path
(closed loop, 50 connections) and its latency open loop at half that
capacity, then a Zipf read load over 10,000 users starting from a cold
cache (hit rate, Postgres loads per read). Five phases of `phase_s` each: bounded (~35 s full).

Hit and load counts come from the api's own counters (GET /v1/stats/cache, deltas around each
phase); with one api process they are every read's. A Postgres query here is a loader call
(`loads`) or a read that bypassed the cache (`fallbacks`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import uuid
from typing import Any

import asyncpg
import httpx

from bench import systems
from bench.load import ClosedLoop, OpenLoop
from bench.options import Options
from bench.processes import say
from bench.results import LoadRun
from bench.stack import Stack

USERS = 10_000
HOT_USERS = 100
CONNECTIONS = 50
ZIPF_S = 1.0  # the classic Zipf law: the k-th most popular user is read ∝ 1/k
ZIPF_REQUESTS = 60_000  # pre-generated, cycled through if a phase sends more
PHASE_S_MAX = 7.0
STEADY_S = 40.0
ROUNDS = 3  # document and profile reads alternate in this many rounds each

# Profiles are ~300 B of JSON: the document read path is measured with a document that size.
DOC_BYTES = 300


def phase_seconds(opts: Options) -> float:
    return min(opts.duration, PHASE_S_MAX)


def steady_seconds(opts: Options) -> float:
    """The steady-state Zipf phase: 40 s in a full run (~60,000 reads here), short in --quick."""
    return phase_seconds(opts) if opts.quick else STEADY_S


async def _make_users(database_url: str, count: int, rng: random.Random) -> list[str]:
    """Users with profiles, straight into Postgres (signing 10,000 up through argon2 would
    dominate the run); none of them has a session or was read yet."""
    conn = await asyncpg.connect(database_url)
    try:
        tenant = str(uuid.uuid4())
        ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(count)]
        async with conn.transaction():
            await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 'bench')", tenant)
            await conn.execute(
                "INSERT INTO users (id, tenant_id, username, password_hash, role)"
                " SELECT u, $2, 'bp-' || u::text, 'x', 'member' FROM unnest($1::uuid[]) AS u",
                ids,
                tenant,
            )
            await conn.execute(
                "INSERT INTO profiles (user_id, display_name, bio, language, region, interests)"
                " SELECT u, 'User ' || left(u::text, 8), repeat('likes long walks ', 8), 'en',"
                " 'FR', ARRAY['chess', 'rock-climbing', 'jazz'] FROM unnest($1::uuid[]) AS u",
                ids,
            )
    finally:
        await conn.close()
    return ids


def _get(port: int, token: str, path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()


def zipf_order(users: list[str], n: int, rng: random.Random) -> list[str]:
    weights = [1 / (k**ZIPF_S) for k in range(1, len(users) + 1)]
    cumulative = list(itertools.accumulate(weights))
    return rng.choices(users, cum_weights=cumulative, k=n)


async def _profile_counters(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, int]:
    r = await client.get("/v1/stats/cache", headers=auth)
    r.raise_for_status()
    counters: dict[str, int] = r.json()["families"].get("profile", {})
    return counters


async def _closed(port: int, requests: list[bytes], seconds: float, label: str) -> LoadRun:
    driver = ClosedLoop(port, requests, CONNECTIONS, seconds)
    rec = await driver.run(drain_timeout=10)
    run = LoadRun.of("closed", "redline", rec, None)
    say(
        f"profiles {label}: {run.achieved_per_s:,.0f}/s  p50 {run.p50_ms or 0:.2f} ms"
        f"  p99 {run.p99_ms or 0:.2f} ms  errors {run.error_count}"
    )
    return run


async def _open(port: int, requests: list[bytes], rate: float, seconds: float) -> LoadRun:
    driver = OpenLoop(port, requests, rate, seconds, CONNECTIONS)
    await driver.prewarm(16)
    rec = await driver.run(drain_timeout=10)
    run = LoadRun.of("open", "redline", rec, rate)
    say(
        f"profiles cached reads at {rate:,.0f}/s (open loop, <= {CONNECTIONS} connections):"
        f" p50 {run.p50_ms or 0:.2f} ms  p99 {run.p99_ms or 0:.2f} ms  errors {run.error_count}"
    )
    return run


def _rounds(runs: list[LoadRun]) -> dict[str, Any]:
    """Alternated rounds of one phase: mean throughput, median latencies, summed errors."""
    errors: dict[str, int] = {}
    for run in runs:
        for kind, n in run.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "reads_per_s": statistics.mean(r.achieved_per_s for r in runs),
        "p50_ms": statistics.median(r.p50_ms or 0.0 for r in runs),
        "p99_ms": statistics.median(r.p99_ms or 0.0 for r in runs),
        "errors": errors,
        "answered": sum(r.ok for r in runs),
        "per_round_reads_per_s": [r.achieved_per_s for r in runs],
    }


def _phase(run: LoadRun) -> dict[str, Any]:
    return {
        "reads_per_s": run.achieved_per_s,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
        "errors": run.errors,
        "answered": run.ok,
    }


def _cache_numbers(before: dict[str, int], after: dict[str, int], run: LoadRun) -> dict[str, Any]:
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    reads = run.ok + run.error_count
    hits = delta.get("hits", 0) + delta.get("negative_hits", 0)
    lookups = hits + delta.get("misses", 0)
    queries = delta.get("loads", 0) + delta.get("fallbacks", 0)
    return {
        "reads": reads,
        "hit_rate": hits / lookups if lookups else None,
        "pg_queries": queries,
        "pg_queries_per_read": queries / reads if reads else None,
        "counters": delta,
    }


async def run(stack: Stack, opts: Options) -> dict[str, Any]:
    seconds = phase_seconds(opts)
    rng = random.Random(opts.seed)
    say(f"profiles: creating {USERS + HOT_USERS:,} users with profiles")
    users = await _make_users(stack.database_url, USERS + HOT_USERS, rng)
    zipf_users, hot = users[:USERS], users[USERS:]
    # Warming would preload recently seen users and blur the cold-cache measurement: off here.
    running = await asyncio.to_thread(
        systems.start, stack, "redline", opts.flush_interval, {"REDLINE_WARM_LIMIT": 0}
    )
    port = running.port
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False
        ) as client:
            creds = {"username": "profile-reader", "password": "bench password"}
            r = await client.post("/v1/auth/signup", json=creds)
            r.raise_for_status()
            token = r.json()["token"]
            auth = {"Authorization": f"Bearer {token}"}
            r = await client.post(
                "/v1/documents", json={"title": "doc", "content": "x" * DOC_BYTES}, headers=auth
            )
            r.raise_for_status()
            doc_id = r.json()["id"]
            for user in hot:  # the hot set, cached before its phase
                (await client.get(f"/v1/users/{user}/profile", headers=auth)).raise_for_status()
            (await client.get(f"/v1/documents/{doc_id}", headers=auth)).raise_for_status()

            # Alternated in short rounds: on a shared machine the load drifts, and comparing two
            # runs made at different moments would measure the drift.
            doc_runs, hot_runs = [], []
            for _ in range(ROUNDS):
                doc_runs.append(
                    await _closed(
                        port,
                        [_get(port, token, f"/v1/documents/{doc_id}")],
                        seconds / ROUNDS,
                        "document reads",
                    )
                )
                hot_runs.append(
                    await _closed(
                        port,
                        [_get(port, token, f"/v1/users/{u}/profile") for u in hot],
                        seconds / ROUNDS,
                        "cached profile reads",
                    )
                )
            hot_rate = statistics.mean(r.achieved_per_s for r in hot_runs)
            # Closed-loop latency at saturation is just connections / throughput; the latency a
            # client sees is measured open loop, at half the capacity just measured.
            rate = max(50.0, round(hot_rate / 2 / 50) * 50)
            open_run = await _open(
                port, [_get(port, token, f"/v1/users/{u}/profile") for u in hot], rate, seconds
            )
            order = zipf_order(zipf_users, ZIPF_REQUESTS, rng)
            zipf_requests = [_get(port, token, f"/v1/users/{u}/profile") for u in order]
            zipf: dict[str, Any] = {}
            seen: set[str] = set()
            # "steady": a fresh sample of the same law once the cache has lived through two
            # phases, which is what the seeds' 94% (a production figure) describes.
            later = zipf_order(zipf_users, 2 * ZIPF_REQUESTS, random.Random(opts.seed + 1))
            later_requests = [_get(port, token, f"/v1/users/{u}/profile") for u in later]
            for label, who, part in (
                ("cold", order, zipf_requests),
                ("warm", order[::-1], zipf_requests[::-1]),
                ("steady", later, later_requests),
            ):
                before = await _profile_counters(client, auth)
                # The steady phase runs longer: a hit rate is a long-running cache's property,
                # and in a short phase the first reads of tail users (compulsory misses) dominate.
                span = steady_seconds(opts) if label == "steady" else seconds
                z = await _closed(port, part, span, f"zipf {label} start")
                after = await _profile_counters(client, auth)
                zipf[label] = {**_phase(z), **_cache_numbers(before, after, z)}
                # A user's first read ever must miss (compulsory): the least loads possible.
                read = {who[i % len(who)] for i in range(z.sent)}
                zipf[label]["first_reads"] = len(read - seen)
                seen |= read
                say(
                    f"profiles zipf {label}: hit rate {zipf[label]['hit_rate'] or 0:.3f},"
                    f" pg queries/read {zipf[label]['pg_queries_per_read'] or 0:.4f},"
                    f" loads {zipf[label]['pg_queries']:,} for"
                    f" {zipf[label]['first_reads']:,} first reads of a user"
                )
    finally:
        await asyncio.to_thread(stack.children.stop_all)
    summed = {
        k: sum(z["counters"].get(k, 0) for z in zipf.values())
        for k in ("hits", "negative_hits", "misses", "loads", "fallbacks")
    }
    hits = summed["hits"] + summed["negative_hits"]
    lookups = hits + summed["misses"]
    total_reads = sum(z["reads"] for z in zipf.values())
    total_queries = summed["loads"] + summed["fallbacks"]
    return {
        "phase_s": seconds,
        "connections": CONNECTIONS,
        "users": USERS,
        "zipf_s": ZIPF_S,
        "rounds": ROUNDS,
        "document_read": _rounds(doc_runs),
        "cached_profile_read": _rounds(hot_runs),
        "cached_profile_open": {**_phase(open_run), "rate": open_run.target_rate},
        "throughput_vs_document_read": statistics.median(
            h.achieved_per_s / d.achieved_per_s
            for h, d in zip(hot_runs, doc_runs, strict=True)
            if d.achieved_per_s
        ),
        "zipf": zipf,
        "zipf_overall": {
            "reads": total_reads,
            "hit_rate": hits / lookups if lookups else None,
            "pg_queries_per_read": total_queries / total_reads if total_reads else None,
            "first_reads": sum(z["first_reads"] for z in zipf.values()),
            "pg_queries": total_queries,
            # The best any cache-aside can do from cold in this many reads.
            "best_hit_rate": 1 - sum(z["first_reads"] for z in zipf.values()) / total_reads
            if total_reads
            else None,
        },
    }
