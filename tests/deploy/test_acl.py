"""deploy/redis/users.acl on a real Valkey: each service does its real work as its own user, and
none of them can wipe, list or reconfigure the server.

The api, the flusher and the matcher run here with REDLINE_ENV=production, so their start-up
permission check (shared/infra/permissions.py) must accept their users.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, RedisError, ResponseError

from services.api.app import create_app
from services.flusher import worker
from services.matcher.pool import Pool, PoolEntry
from shared.domain import collab
from shared.infra.clients import redis_client
from shared.infra.permissions import _dryrun, _queued, can_flushall
from shared.settings import Settings
from shared.store.awareness import AwarenessLimits, AwarenessStatus, AwarenessStore
from shared.store.keys import Keys
from shared.store.scripts import LUA_DIR, Scripts, lua_source
from shared.store.update_log import AppendStatus, SeedStatus, UpdateLog, append_options
from tests.conftest import ROOT, Servers, make_settings
from tests.services.matcher.conftest import (
    matcher_server,
    open_socket,
    recv_type,
    send,
    set_profile,
)
from tests.services.matcher.test_events import event, events_socket, subscribe, until
from tests.support.users import create_doc, edit, signup
from tests.support.valkeys import valkey_server

ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
SERVICES = ("api", "flusher", "matcher")


def passwords() -> dict[str, str]:
    """user -> the plain `>password` deploy/redis/users.acl gives it."""
    found = {}
    for line in ACL_FILE.read_text().splitlines():
        match = re.match(r"user (\S+) on .*?>(\S+)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


@pytest.fixture(scope="module")
def acl_port() -> Iterator[int]:
    data = ROOT / ".data" / f"test-{os.getpid()}-acl"
    # DEBUG enabled on the server, so that the ACL alone is what keeps the services from it.
    args = ("--aclfile", str(ACL_FILE), "--enable-debug-command", "yes")
    try:
        with valkey_server(Path(data), *args) as port:
            yield port
    finally:
        shutil.rmtree(data, ignore_errors=True)


def user_url(port: int, user: str) -> str:
    return f"redis://{user}:{passwords()[user]}@127.0.0.1:{port}/0"


def service_url(port: int, service: str) -> str:
    return user_url(port, f"redline-{service}")


@pytest.fixture(autouse=True)
async def empty(acl_port: int) -> None:
    admin = Redis.from_url(user_url(acl_port, "redline-admin"))
    await admin.flushall()
    await admin.aclose()


OPERATOR_TOKEN = "acl-test-operator-token"


def acl_settings(servers: Servers, port: int, service: str) -> Settings:
    # The ACL's key patterns are for the default prefix.
    return make_settings(
        servers,
        redis_url=service_url(port, service),
        key_prefix="rl",
        env="production",
        operator_token=OPERATOR_TOKEN,  # production closes /metrics without one
    )


async def test_the_default_user_is_disabled(acl_port: int) -> None:
    client = Redis.from_url(f"redis://127.0.0.1:{acl_port}/0")
    with pytest.raises(RedisError, match=r"NOAUTH|[Aa]uthentication"):
        await client.ping()
    await client.aclose()


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("KEYS", "*"),
        ("CONFIG", "GET", "*"),
        ("CONFIG", "SET", "maxmemory-policy", "allkeys-lru"),
        ("DEBUG", "OBJECT", "rl:x"),
        ("ACL", "SETUSER", "mallory", "on", "+@all"),
        ("SCRIPT", "FLUSH"),
        ("SWAPDB", "0", "1"),
    ],
)
async def test_service_users_cannot_wipe_list_or_reconfigure(
    acl_port: int, service: str, command: tuple[str, ...]
) -> None:
    client = Redis.from_url(service_url(acl_port, service))
    try:
        assert await client.ping()
        with pytest.raises(NoPermissionError):
            await client.execute_command(*command)
    finally:
        await client.aclose()


@pytest.mark.parametrize("service", SERVICES)
async def test_service_users_reach_only_redline_keys_and_channels(
    acl_port: int, service: str
) -> None:
    client = Redis.from_url(service_url(acl_port, service), decode_responses=True)
    try:
        await client.set("rl:{s1}:doc:probe", "ok")
        if service == "matcher":
            # No queue, and only the users' match channels (services/matcher/hub.py).
            with pytest.raises(NoPermissionError):
                await client.set("arq:job:probe", "ok")
            with pytest.raises(NoPermissionError):
                await client.publish("rl:events:probe", "hi")
            assert await client.publish("rl:match:user:probe", "hi") == 0
        else:
            await client.set("arq:job:probe", "ok")
            assert await client.publish("rl:events:probe", "hi") == 0
        with pytest.raises(NoPermissionError):
            await client.set("other-app:key", "x")
        with pytest.raises(NoPermissionError):
            await client.publish("other-app:events", "x")
    finally:
        await client.aclose()


@pytest.mark.parametrize("service", SERVICES)
async def test_the_startup_check_finds_no_flushall_for_service_users(
    acl_port: int, service: str
) -> None:
    url = service_url(acl_port, service)
    assert await _dryrun(url) is None, "a service user may not even ask ACL DRYRUN"
    assert await _queued(url) is False
    assert await can_flushall(url) is False


async def test_the_startup_check_finds_flushall_for_the_admin_and_runs_nothing(
    acl_port: int,
) -> None:
    url = user_url(acl_port, "redline-admin")
    admin = Redis.from_url(url)
    await admin.set("rl:keep", "1")
    assert await _dryrun(url) is True
    assert await _queued(url) is True
    assert await admin.get("rl:keep") == b"1", "the probe queued FLUSHALL but never ran it"
    await admin.aclose()


@pytest.fixture
async def api_as_its_user(migrated: Servers, acl_port: int) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(acl_settings(migrated, acl_port, "api"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def test_api_and_flusher_do_their_whole_job_as_their_users_in_production(
    api_as_its_user: httpx.AsyncClient,
    migrated: Servers,
    acl_port: int,
    db: asyncpg.Connection,
) -> None:
    api = api_as_its_user
    # api: sessions, rate limits, documents, presence, the edit script, enqueueing a flush job.
    alice = await signup(api, "alice")
    assert (await api.get("/v1/auth/me", headers=alice.auth)).status_code == 200
    doc = (await create_doc(api, alice, content="v0"))["id"]
    other = (await create_doc(api, alice, title="doomed"))["id"]
    presence = f"/v1/documents/{doc}/presence"
    assert (await api.post(presence, headers=alice.auth)).status_code == 200
    assert (await edit(api, alice, doc, "typed as redline-api")).status_code == 202
    assert (await edit(api, alice, other, "never saved")).status_code == 202
    got = (await api.get(f"/v1/documents/{doc}", headers=alice.auth)).json()
    assert got["content"] == "typed as redline-api"
    assert (await api.get(f"/v1/documents/{doc}/status", headers=alice.auth)).status_code == 200
    assert (await api.get("/v1/documents", headers=alice.auth)).status_code == 200
    assert (await api.delete(f"/v1/documents/{other}", headers=alice.auth)).status_code == 204
    assert (await api.delete(presence, headers=alice.auth)).json() == {"editors": []}
    assert (await api.get("/readyz")).status_code == 200
    # profiles (cache scripts on the cache role), trending, and the save/snapshot jobs.
    patched = await api.patch(
        "/v1/users/me/profile", json={"interests": ["chess"]}, headers=alice.auth
    )
    assert patched.status_code == 200, patched.text
    profile = await api.get(f"/v1/users/{alice.user_id}/profile", headers=alice.auth)
    assert profile.json()["interests"] == ["chess"]
    assert (await api.get("/v1/trending/interests", headers=alice.auth)).status_code == 200
    save = await api.post(f"/v1/documents/{doc}/save", headers=alice.auth)
    assert save.status_code == 202, save.text
    # Its pub/sub listeners subscribed as redline-api: session revocations and cache wake-ups.
    admin_keys = Keys("rl", 64)
    watcher = Redis.from_url(user_url(acl_port, "redline-admin"), decode_responses=True)
    try:
        for _ in range(50):
            subs = dict(await watcher.pubsub_numsub(admin_keys.sessions_revoked))
            patterns = await watcher.pubsub_numpat()
            if subs[admin_keys.sessions_revoked] >= 1 and patterns >= 1:
                break
            await asyncio.sleep(0.1)
        assert subs[admin_keys.sessions_revoked] >= 1 and patterns >= 1, (subs, patterns)
    finally:
        await watcher.aclose()

    # flusher: the real arq worker in burst mode runs the queued flush job (polling, in-progress
    # markers, health key, INFO at start), then the cron job, the presence sweep and the drain.
    settings = acl_settings(migrated, acl_port, "flusher")
    arq_worker = worker.create_worker(
        settings, burst=True, max_burst_jobs=1, cron_jobs=[], handle_signals=False, poll_delay=0.05
    )
    keys = Keys("rl", settings.doc_shards)
    admin = Redis.from_url(user_url(acl_port, "redline-admin"))
    try:
        await asyncio.wait_for(arq_worker.main(), 20)
        # The worker's health key (deploy/healthcheck.py reads it; close() removes it).
        assert await admin.exists(keys.flusher_health) == 1
    finally:
        await arq_worker.close()
        await admin.aclose()
    assert arq_worker.jobs_complete >= 1 and arq_worker.jobs_failed == 0
    assert await db.fetchval("SELECT content FROM documents WHERE id = $1", doc) == (
        "typed as redline-api"
    )
    ctx: dict[str, Any] = {"settings": settings}
    await worker.startup(ctx)
    assert (await edit(api, alice, doc, "second")).status_code == 202
    assert (await worker.flush_dirty(ctx))["written"] == 1
    assert await worker.sweep_presence(ctx) == 0
    await worker.shutdown(ctx)
    assert await db.fetchval("SELECT version FROM documents WHERE id = $1", doc) == 2
    assert await db.fetchval("SELECT count(*) FROM documents WHERE id = $1", other) == 0


async def _pool_expiry(admin: Redis, user_id: str) -> float | None:
    score: float | None = await admin.zscore(Keys("rl", 64).pool_members("en"), user_id)
    return score


async def test_the_matcher_does_its_whole_job_as_its_user_in_production(
    api_as_its_user: httpx.AsyncClient,
    migrated: Servers,
    acl_port: int,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Handshake (session GETEX), pool entry, find_match (GCRA + match scripts), the room document,
    trending, pub/sub delivery, the inbox (XADD, XRANGE, XDEL), the heartbeat (pool refresh,
    session EXISTS), leaving the pool, and /readyz: all as redline-matcher, no NOPERM anywhere."""
    api = api_as_its_user
    names = ("ada", "bob", "cara", "dan")
    users = {name: await signup(api, name) for name in names}
    for user in users.values():
        await set_profile(db, user, ["chess", "go"])
    ada, bob, cara, dan = (users[n] for n in names)
    # pool_ttl_s=3: the heartbeat runs every second, within the test.
    settings = acl_settings(migrated, acl_port, "matcher").model_copy(update={"pool_ttl_s": 3})
    admin = Redis.from_url(user_url(acl_port, "redline-admin"), decode_responses=True)
    keys = Keys("rl", settings.doc_shards)
    caplog.set_level(logging.WARNING, logger="redline")
    await admin.execute_command("ACL", "LOG", "RESET")
    try:
        async with matcher_server(settings) as url:
            http = url.replace("ws://", "http://")
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{http}/readyz")).status_code == 200
            async with open_socket(url, ada) as a, open_socket(url, bob) as b:
                await recv_type(a, "queued")
                await recv_type(b, "queued")
                await send(b, type="find_match")
                mine = await recv_type(b, "match_found")
                theirs = await recv_type(a, "match_found")
                assert mine["partner_id"] == ada.user_id and theirs["partner_id"] == bob.user_id
                await send(a, type="ping")
                await recv_type(a, "pong")
            async with open_socket(url, cara) as c:
                await recv_type(c, "queued")
                # The heartbeat extends her entry (pool refresh script, session EXISTS).
                first = await _pool_expiry(admin, cara.user_id)
                later = first
                for _ in range(40):
                    await asyncio.sleep(0.1)
                    later = await _pool_expiry(admin, cara.user_id)
                    if first is not None and later is not None and later > first:
                        break
                assert first is not None and later is not None and later > first
                await send(c, type="cancel")
                await recv_type(c, "cancelled")
                assert await _pool_expiry(admin, cara.user_id) is None
            # The inbox: Cara's socket is gone but her entry is still in the pool (her process
            # died); Dan's match waits in her inbox until she reconnects.
            stale = PoolEntry(cara.user_id, "gone-socket", interests=("chess",))
            await Pool(settings, Scripts(admin, keys)).enter("en", stale)
            async with open_socket(url, dan) as d:
                await recv_type(d, "queued")
                await send(d, type="find_match")
                found = await recv_type(d, "match_found")
            assert found["partner_id"] == cara.user_id
            assert await admin.xlen(keys.inbox(cara.user_id)) == 1
            async with open_socket(url, cara) as c:
                waiting = await recv_type(c, "match_found")
                assert waiting["partner_id"] == dan.user_id
                await send(c, type="ping")
                await recv_type(c, "pong")
            assert await admin.xlen(keys.inbox(cara.user_id)) == 0
            # /v1/ws/events: the subscribe check (Documents.readable), the stream reader (XREAD)
            # and an edit's event, appended by the api user's edit script.
            doc = (await create_doc(api, ada, title="shared"))["id"]
            async with events_socket(url, ada) as ev:
                assert (await subscribe(ev, doc))["type"] == "subscribed"
                assert (await edit(api, ada, doc, "typed as redline-api")).status_code == 202
                edited, _ = await until(ev, event("document.edited", document_id=doc))
                assert edited["version"] == 1
            async with httpx.AsyncClient() as client:
                operator = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
                text = (await client.get(f"{http}/metrics", headers=operator)).text
            assert "redline_matcher_matches_total 2.0" in text
        # Trending was counted (a pipeline the matcher runs after both results are out).
        day = datetime.now(UTC).date()
        for _ in range(40):
            if await admin.zscore(keys.trending(day), "chess") == 2:
                break
            await asyncio.sleep(0.05)
        assert await admin.zscore(keys.trending(day), "chess") == 2
        # Every denial Redis logged for the matcher is the start-up probe's (it asks whether
        # FLUSHALL is allowed, and may not ask ACL): the matcher's own work was never refused,
        # not even where it swallows Redis errors (the inbox acknowledgement, trending).
        log = await admin.acl_log()
        refused = {e["object"] for e in log if e["username"] == "redline-matcher"}
        assert refused <= {"flushall", "acl|whoami"}, log
    finally:
        await admin.aclose()
    warnings = [r for r in caplog.records if r.name.startswith("redline.matcher")]
    assert not warnings, [(r.name, r.getMessage(), r.__dict__.get("err")) for r in warnings]


async def test_the_api_stores_and_clears_awareness_as_its_user(acl_port: int) -> None:
    """The awareness scripts' commands (a new client sweeps with HGETALL and counts with HLEN;
    HSET, PEXPIRE, PUBLISH; the clear's HGET, HDEL), the plain read, and the collab sockets'
    session PTTL, all as redline-api."""
    keys = Keys("rl", 64)
    client = redis_client(service_url(acl_port, "api"), binary=True)
    store = AwarenessStore(client, keys, AwarenessLimits(30_000, 8, 1024))
    doc = "00000000-0000-4000-8000-00000000aaaa"
    try:
        assert await store.set(doc, [(7, 1, b'{"u":"ada"}')], "p:s", 1000, b"p:s a x") == [
            AwarenessStatus.STORED
        ]
        assert await store.states(doc, 1000) == [(7, 1, b'{"u":"ada"}')]
        assert await store.clear(doc, "p:s", [7]) == [(7, 1)]
        assert await client.pttl(keys.session("a" * 64)) == -2
    finally:
        await client.aclose()


async def test_a_service_refuses_a_url_without_its_password(acl_port: int) -> None:
    client = Redis.from_url(f"redis://redline-api:wrong@127.0.0.1:{acl_port}/0")
    with pytest.raises((RedisError, ResponseError)):
        await client.ping()
    await client.aclose()


# The scripts each service runs (shared/store/lua). The matcher's pool and match scripts, the
# flusher's flush bookkeeping, the api's editing and co-editing; the rest (presence, the
# profile cache, seeding a document, deletes) run in more than one service.
MATCHER_SCRIPTS = {"match", "pool_refresh", "pool_leave", "gcra"}
FLUSHER_SCRIPTS = {"claim", "release", "mark_clean", "quarantine", "read_docs", "rebase"}
API_ONLY_SCRIPTS = {
    "edit",
    "gcra",
    "collab_append",
    "collab_seed",
    "collab_read",
    "awareness_set",
    "awareness_clear",
}
SCRIPTS = {p.stem for p in LUA_DIR.glob("*.lua")}


# Commands whose ACL rules name a subcommand: `+pubsub|numsub`, not `+pubsub`.
CONTAINERS = {"pubsub", "client", "xinfo", "object", "script"}


def script_commands(name: str) -> set[str]:
    """The commands `name`.lua (its includes too) calls, lower case as ACL rules name them."""
    found = set()
    calls = re.findall(
        r"redis\.p?call\(\s*'([A-Za-z]+)'(?:\s*,\s*'([A-Za-z]+)')?", lua_source(name)
    )
    for command, sub in calls:
        command = command.lower()
        found.add(f"{command}|{sub.lower()}" if command in CONTAINERS else command)
    return found


def acl_commands(user: str) -> set[str]:
    """The commands `user`'s line grants: every service user starts from `-@all`, so what it
    may run is exactly its `+command` rules."""
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith(f"user {user} "):
            assert " -@all" in line, "a service user must start from -@all"
            return set(re.findall(r" \+([a-z_|]+)", line))
    raise AssertionError(f"no user {user} in {ACL_FILE}")


@pytest.mark.parametrize(
    ("service", "scripts"),
    [
        ("api", SCRIPTS - MATCHER_SCRIPTS - FLUSHER_SCRIPTS | API_ONLY_SCRIPTS),
        ("flusher", SCRIPTS - MATCHER_SCRIPTS - API_ONLY_SCRIPTS | FLUSHER_SCRIPTS),
        ("matcher", MATCHER_SCRIPTS),
    ],
)
def test_each_service_user_may_run_every_command_of_its_scripts(
    service: str, scripts: set[str]
) -> None:
    """Redis checks a script's commands against the caller's ACL at each call: a missing one
    fails the whole script ("ACL failure in script") only when that line runs, which a test of a
    plain document's flush never reaches (HSTRLEN of a co-edited document's state did not)."""
    assert scripts <= SCRIPTS
    granted = acl_commands(f"redline-{service}")
    missing = {n: sorted(script_commands(n) - granted) for n in sorted(scripts)}
    assert not {n: m for n, m in missing.items() if m}


async def test_co_editing_urgent_flushes_and_replica_waits_run_as_their_users(
    api_as_its_user: httpx.AsyncClient,
    migrated: Servers,
    acl_port: int,
    db: asyncpg.Connection,
) -> None:
    """A co-edited document seeded and typed into as redline-api (the collab socket's scripts),
    its compaction and the urgent pass as redline-flusher (read_docs.lua's HSTRLEN, the urgent
    ZCOUNT), and the WAIT of REDLINE_EDIT_MIN_REPLICAS as redline-api: no command refused."""
    api = api_as_its_user
    admin = Redis.from_url(user_url(acl_port, "redline-admin"), decode_responses=True)
    await admin.execute_command("ACL", "LOG", "RESET")
    alice = await signup(api, "alice")
    doc = (await create_doc(api, alice, content="seed"))["id"]
    assert (await api.get(f"/v1/documents/{doc}", headers=alice.auth)).status_code == 200
    api_settings = acl_settings(migrated, acl_port, "api")
    keys = Keys("rl", api_settings.doc_shards)
    as_api = redis_client(api_settings.state_url, binary=True)
    try:
        updates = UpdateLog(as_api, keys, append_options(api_settings))
        assert await updates.seed(doc, collab.seed_update("seed"), 0) == SeedStatus.INSTALLED
        typed, text = collab.new_doc(collab.seed_update("seed"), client_id=77)
        before = typed.get_state()
        text += " typed"
        grants = (f"t:{alice.tenant_id}", f"u:{alice.user_id}")
        reply = await updates.append(doc, typed.get_update(before), "s:1", alice.user_id, 1, grants)
        assert reply.status == AppendStatus.APPENDED
        # A socket's append asks PUBSUB NUMSUB whether another process listens.
        before = typed.get_state()
        text += "!"
        control = keys.collab_channel("-acl-test")
        reply = await updates.append(
            doc, typed.get_update(before), "s:1", alice.user_id, 2, grants, own_relay=control
        )
        assert reply.status == AppendStatus.APPENDED
        assert await Scripts(as_api, keys).wait_replicas(0, 10) == 0
    finally:
        await as_api.aclose()
    ctx: dict[str, Any] = {"settings": acl_settings(migrated, acl_port, "flusher")}
    await worker.startup(ctx)
    try:
        await worker.flush_urgent(ctx)  # nothing urgent: its ZCOUNT pipeline runs all the same
        assert (await worker.flush_dirty(ctx))["written"] == 1
    finally:
        await worker.shutdown(ctx)
    try:
        stored = await db.fetchrow("SELECT content, ystate FROM documents WHERE id = $1", doc)
        assert stored is not None and stored["content"] == "seed typed!"
        assert stored["ystate"], "the fold's state was written"
        log = await admin.acl_log()
        refused = {e["object"] for e in log if e["username"] in ("redline-api", "redline-flusher")}
        # The start-up check asks ACL WHOAMI and whether FLUSHALL is allowed: both refused.
        assert refused <= {"flushall", "acl|whoami"}, log
    finally:
        await admin.aclose()
