"""The matcher scenario: find_match script latency by pool size, and idle sockets per process.

1. Script latency: one language pool filled with 1,000 / 10,000 / 100,000 users (5 interests
   each out of 200, skewed like real interests: a few are very popular), then sequential
   find_match calls (shared/store/lua/match.lua through its wrapper, one round trip each) by seekers
   with 5 interests. The pool is kept at its size: a matched partner is put back and an unmatched
   seeker removed, outside the timed call. Reported: client round trip p50/p99 and Valkey's own
   microseconds per script call (INFO commandstats).
2. Cross-instance notification: two matcher processes, a waiter on one and a seeker on the
   other: time from find_match to the waiter's match_found (room creation included).
3. Idle sockets: one real matcher process (`python -m services.matcher`), N authenticated
   sockets opened from this process; the matcher's RSS growth per socket, the connect rate, and
   the time for one frame published to every user's channel to reach every socket.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import psutil
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from bench.processes import child_env, say
from bench.results import IdleSockets, NotifyLatency, PoolLatency, percentile
from bench.stack import Stack
from deploy.embedded import free_port
from services.matcher.messages import Delivery, MatchFound
from services.matcher.pool import Pool, PoolEntry
from shared.domain.accounts import Principal, token_hash
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import MatchStatus, Scripts

VOCABULARY = [f"interest-{n}" for n in range(200)]
# Zipf-like popularity: interest n is chosen with weight 1 / (n + 1).
WEIGHTS = [1 / (n + 1) for n in range(len(VOCABULARY))]
INTERESTS_EACH = 5
FILL_CONCURRENCY = 64
UPKEEP_EVERY = 20  # timed searches between two rounds of pool upkeep


def _interests(rng: random.Random) -> tuple[str, ...]:
    chosen: set[str] = set()
    while len(chosen) < INTERESTS_EACH:
        chosen.update(rng.choices(VOCABULARY, WEIGHTS, k=INTERESTS_EACH - len(chosen)))
    return tuple(sorted(chosen))


async def _bounded(coros: list[Any], limit: int) -> None:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> None:
        async with gate:
            await coro

    await asyncio.gather(*(one(c) for c in coros))


async def _script_usec(redis: Redis) -> tuple[int, float]:
    stats = await redis.info("commandstats")
    row = stats.get("cmdstat_evalsha") or {}
    return int(row.get("calls", 0)), float(row.get("usec", 0))


async def pool_latency(
    redis_url: str, sizes: list[int], calls: int, seed: int
) -> list[PoolLatency]:
    settings = Settings(redis_url=redis_url, key_prefix="bench")
    keys = Keys(settings.key_prefix, settings.doc_shards)
    redis = Redis.from_url(redis_url, decode_responses=True)
    pool = Pool(settings, Scripts(redis, keys))
    rng = random.Random(seed)
    # Every command into the slow log: Valkey's own time for each search, free of client noise.
    slower_than = (await redis.config_get("slowlog-log-slower-than"))["slowlog-log-slower-than"]
    await redis.config_set("slowlog-log-slower-than", 0)
    out: list[PoolLatency] = []
    try:
        for size in sizes:
            language = f"z{len(out)}"
            started = time.perf_counter()
            members = {f"u{n}": _interests(rng) for n in range(size)}
            await _bounded(
                [pool.enter(language, PoolEntry(u, "t", interests=i)) for u, i in members.items()],
                FILL_CONCURRENCY,
            )
            say(f"matcher: pooled {size:,} users in {time.perf_counter() - started:.1f}s")
            latencies: list[float] = []
            matched, server_calls, server_usec = 0, 0, 0.0
            server_each: list[float] = []  # ms inside Valkey, from the slow log (threshold 0)
            for chunk in range(0, calls, UPKEEP_EVERY):
                # Timed searches, then the upkeep that keeps the pool at its size, so that
                # Valkey's own time per call (commandstats) is measured for the searches alone.
                calls0, usec0 = await _script_usec(redis)
                await redis.slowlog_reset()
                replies = []
                for n in range(chunk, min(calls, chunk + UPKEEP_EVERY)):
                    seeker = PoolEntry(f"s{n}", "t", interests=_interests(rng))
                    t0 = time.perf_counter()
                    reply = await pool.find(language, seeker)
                    latencies.append((time.perf_counter() - t0) * 1000)
                    replies.append((seeker, reply))
                calls1, usec1 = await _script_usec(redis)
                server_each += [
                    e["duration"] / 1000
                    for e in await redis.slowlog_get(UPKEEP_EVERY * 2)
                    # redis-py leaves the command as bytes here, even with decode_responses.
                    if bytes(e["command"]).startswith(b"EVALSHA")
                ]
                server_calls += calls1 - calls0
                server_usec += usec1 - usec0
                for seeker, reply in replies:
                    if reply.status is MatchStatus.MATCHED and reply.partner_id is not None:
                        matched += 1
                        partner = reply.partner_id
                        if partner not in members:
                            # An earlier seeker of this chunk, queued by its own search: it
                            # was never one of the pooled users, so none is put back.
                            continue
                        entry = PoolEntry(partner, "t", interests=members[partner])
                        await pool.enter(language, entry)
                    else:
                        await pool.leave(language, seeker.user_id, "t")
            server_us = server_usec / server_calls if server_calls else None
            inside = sorted(server_each)
            ordered = sorted(latencies)
            out.append(
                PoolLatency(
                    pooled=size,
                    calls=calls,
                    matched=matched,
                    p50_ms=percentile(ordered, 50),
                    p99_ms=percentile(ordered, 99),
                    max_ms=ordered[-1],
                    server_us_per_call=server_us,
                    server_p99_ms=percentile(inside, 99),
                )
            )
            say(
                f"matcher: {size:,} pooled: find_match p50 {out[-1].p50_ms:.3f} ms,"
                f" p99 {out[-1].p99_ms:.3f} ms; inside Valkey {server_us or 0:.0f} us a call,"
                f" p99 {out[-1].server_p99_ms or 0:.3f} ms"
                f" ({matched}/{calls} matched)"
            )
            await _drop_pool(redis, keys, language)
    finally:
        await redis.config_set("slowlog-log-slower-than", slower_than)
        await redis.aclose()
    return out


async def _drop_pool(redis: Redis, keys: Keys, language: str) -> None:
    pattern = keys.pool_members(language).removesuffix("members") + "*"
    async for key in redis.scan_iter(match=pattern, count=1000):
        await redis.unlink(key)


# Idle sockets ------------------------------------------------------------------------------
async def _users(
    stack: Stack,
    redis: Redis,
    keys: Keys,
    n: int,
    seed: int,
    interests_of: Callable[[int], list[str]] | None = None,
) -> list[Principal]:
    """N users with profiles and open sessions, written directly (no password hashing)."""
    rng = random.Random(seed)
    pick = interests_of or (lambda _: list(_interests(rng)))
    tenant = str(uuid.uuid4())
    users = [Principal(str(uuid.uuid4()), tenant, f"idle{i}", "member") for i in range(n)]
    conn = await asyncpg.connect(stack.database_url)
    try:
        await conn.execute("INSERT INTO tenants (id, name) VALUES ($1, 'bench idle')", tenant)
        await conn.executemany(
            "INSERT INTO users (id, tenant_id, username, password_hash, role)"
            " VALUES ($1, $2, $3, 'x', 'member')",
            [(u.user_id, tenant, f"{u.username}-{tenant[:8]}") for u in users],
        )
        await conn.executemany(
            "INSERT INTO profiles (user_id, language, interests) VALUES ($1, 'en', $2)",
            [(u.user_id, pick(i)) for i, u in enumerate(users)],
        )
    finally:
        await conn.close()
    pipe = redis.pipeline(transaction=False)
    for u in users:
        pipe.set(
            keys.session(token_hash(u.user_id)),
            json.dumps(
                {"user_id": u.user_id, "tenant_id": tenant, "username": u.username, "role": u.role}
            ),
            ex=3600,
        )
    await pipe.execute()
    return users  # each user's token is their id (hashed above), for the bench only


async def idle_sockets(stack: Stack, n: int, seed: int, processes: int = 1) -> IdleSockets:
    """`n` authenticated idle sockets spread over `processes` matcher processes: connect rate,
    RSS per socket (the worst process's), and the time to push one frame to all of them."""
    ports = [free_port() for _ in range(processes)]
    names = [f"matcher-idle-{i}" for i in range(processes)]
    settings = Settings(redis_url=stack.redis_url, database_url=stack.database_url)
    keys = Keys(settings.key_prefix, settings.doc_shards)
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    kids = stack.children
    for name, port in zip(names, ports, strict=True):
        kids.spawn(name, ["-m", "services.matcher"], _matcher_env(stack, port))
    sockets: list[ClientConnection] = []
    warm: list[ClientConnection | None] = []
    per_port = dict.fromkeys(ports, 0)
    errors: dict[str, int] = {}

    async def open_one(user: Principal, port: int) -> ClientConnection | None:
        try:
            ws = await connect(
                f"ws://127.0.0.1:{port}/v1/ws/match",
                additional_headers={"Authorization": f"Bearer {user.user_id}"},
                open_timeout=60,
                ping_interval=None,
                max_queue=4,
            )
            await asyncio.wait_for(ws.recv(), 60)  # queued: it is in the pool
            return ws
        except Exception as exc:
            name = type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
            return None

    try:
        for name, port in zip(names, ports, strict=True):
            kids.wait_http(name, port)
        procs = [psutil.Process(kids.procs[name].pid) for name in names]
        users = await _users(stack, redis, keys, n, seed)
        # One warm socket per process first (imports, pools), then the baselines.
        warm += [await open_one(users[i], port) for i, port in enumerate(ports)]
        await asyncio.sleep(0.5)
        base = [proc.memory_info().rss for proc in procs]

        async def open_counted(user: Principal, port: int) -> None:
            ws = await open_one(user, port)
            if ws is not None:
                sockets.append(ws)
                per_port[port] += 1

        rest = users[processes:]
        started = time.perf_counter()
        await _bounded([open_counted(u, ports[i % processes]) for i, u in enumerate(rest)], 200)
        connect_s = time.perf_counter() - started
        await asyncio.sleep(2)
        rss = [proc.memory_info().rss for proc in procs]
        say(
            f"matcher: {len(sockets):,} idle sockets open on {processes} process(es)"
            f" in {connect_s:.1f}s"
        )
        broadcast_ms = await _broadcast(redis, keys, rest, sockets)
        kb = max(
            (after - before) / 1024 / max(1, per_port[port])
            for before, after, port in zip(base, rss, ports, strict=True)
        )
        return IdleSockets(
            sockets=len(rest),
            connected=len(sockets),
            connect_s=connect_s,
            connects_per_s=len(sockets) / connect_s,
            rss_base_mb=sum(base) / 2**20,
            rss_mb=sum(rss) / 2**20,
            kb_per_socket=kb,
            broadcast_ms=broadcast_ms,
            errors=errors,
            processes=processes,
        )
    finally:
        opened = [ws for ws in (*sockets, *warm) if ws is not None]
        await asyncio.gather(*(ws.close() for ws in opened), return_exceptions=True)
        for name in reversed(names):
            kids.stop(name)
        await redis.aclose()


async def _broadcast(
    redis: Redis, keys: Keys, users: list[Principal], sockets: list[ClientConnection]
) -> float | None:
    """One frame published to every connected user's channel: time until all have it."""
    frame = Delivery(
        frame=MatchFound(room_id="r", partner_id="p", document_id="d", shared_interests=[])
    ).model_dump_json()
    started = time.perf_counter()
    pipe = redis.pipeline(transaction=False)
    for u in users:
        pipe.publish(keys.match_channel(u.user_id), frame)
    receiving = asyncio.gather(*(asyncio.wait_for(ws.recv(), 30) for ws in sockets))
    await pipe.execute()
    try:
        await receiving
    except TimeoutError:
        return None
    return (time.perf_counter() - started) * 1000


def _matcher_env(stack: Stack, port: int) -> dict[str, str]:
    return child_env(
        REDLINE_REDIS_URL=stack.redis_url,
        REDLINE_DATABASE_URL=stack.database_url,
        REDLINE_MATCHER_PORT=port,
        REDLINE_LOG_LEVEL="WARNING",
    )


# Cross-instance notification -----------------------------------------------------------------
async def cross_instance(stack: Stack, pairs: int, seed: int) -> NotifyLatency:
    """Pairs of users, the waiter on one matcher process and the seeker on another (each pair
    shares one interest nobody else has): time from the seeker's find_match to the waiter's
    match_found, which includes the claim, the room document in Postgres and the pub/sub hop."""
    ports = free_port(), free_port()
    keys = Keys("rl", Settings().doc_shards)
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    kids = stack.children
    sockets: list[ClientConnection] = []
    try:
        for name, port in zip(("matcher-a", "matcher-b"), ports, strict=True):
            kids.spawn(name, ["-m", "services.matcher"], _matcher_env(stack, port))
        for name, port in zip(("matcher-a", "matcher-b"), ports, strict=True):
            kids.wait_http(name, port)
        users = await _users(
            stack, redis, keys, 2 * pairs, seed, interests_of=lambda i: [f"pair-{i // 2}"]
        )

        async def open_on(port: int, user: Principal) -> ClientConnection:
            ws = await connect(
                f"ws://127.0.0.1:{port}/v1/ws/match",
                additional_headers={"Authorization": f"Bearer {user.user_id}"},
            )
            sockets.append(ws)
            assert json.loads(await ws.recv())["type"] == "queued"
            return ws

        notify: list[float] = []
        reply: list[float] = []
        for i in range(pairs):
            waiter = await open_on(ports[0], users[2 * i])
            seeker = await open_on(ports[1], users[2 * i + 1])
            started = time.perf_counter()
            await seeker.send('{"type": "find_match"}')
            theirs = json.loads(await asyncio.wait_for(waiter.recv(), 10))
            notify.append((time.perf_counter() - started) * 1000)
            mine = json.loads(await asyncio.wait_for(seeker.recv(), 10))
            reply.append((time.perf_counter() - started) * 1000)
            assert theirs["type"] == mine["type"] == "match_found", (theirs, mine)
            assert theirs["partner_id"] == users[2 * i + 1].user_id
        notify.sort()
        reply.sort()
        return NotifyLatency(
            pairs=pairs,
            p50_ms=percentile(notify, 50),
            p99_ms=percentile(notify, 99),
            max_ms=notify[-1],
            seeker_p50_ms=percentile(reply, 50),
            seeker_p99_ms=percentile(reply, 99),
        )
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        kids.stop("matcher-b")
        kids.stop("matcher-a")
        await redis.aclose()


async def run(
    stack: Stack, sizes: list[int], calls: int, pairs: int, sockets: int, seed: int
) -> tuple[list[PoolLatency], NotifyLatency | None, list[IdleSockets]]:
    latencies = await pool_latency(stack.redis_url, sizes, calls, seed)
    notify = None
    if pairs > 0:
        notify = await cross_instance(stack, pairs, seed)
        say(
            f"matcher: partner on another process notified in p50 {notify.p50_ms:.1f} ms,"
            f" p99 {notify.p99_ms:.1f} ms ({pairs} pairs)"
        )
    idle: list[IdleSockets] = []
    if sockets > 0:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        # This client holds one descriptor per socket, for both processes' sockets at once.
        if 2 * sockets + 500 > soft:
            say(f"matcher: ulimit -n is {soft}: lowering idle sockets to fit (raise it for more)")
            sockets = max(10, (soft - 500) // 2)
        # One process, then two with twice the sockets: scale-out at the same memory a socket.
        for processes in (1, 2):
            run = await idle_sockets(stack, processes * sockets + processes, seed, processes)
            idle.append(run)
            say(
                f"matcher x{processes}: {run.connected:,} sockets,"
                f" {run.kb_per_socket:.1f} KB RSS each (worst process),"
                f" {run.connects_per_s:,.0f} connects/s, broadcast {run.broadcast_ms} ms"
            )
    return latencies, notify, idle
