"""The write path as a hypothesis state machine, against the real Valkey and Postgres (issue 13).

Rules drive what a deployment does to a document, in any order: an edit through the api (the
edit lane), a flush pass or a one-document flush (the flusher's own functions, as its jobs call
them), a flush pass that dies part way, the clean copy leaving Redis (what its TTL does), a read,
a delete. The model is the
Jepsen-style ledger of what clients were told: each 202's version and content. After every step:
GET returns the newest acknowledged content (until it is overwritten), Postgres never goes back
a version and never holds a version nobody was acknowledged, and a deleted document never comes
back. At the end of each run, after a final flush, Postgres holds exactly the last acknowledged
content of every live document.

Hypothesis runs the machine synchronously, so it drives its own event loop (the api app, the
flusher and the clients live on it for the whole test); each example starts from empty Redis and
Postgres, reset in the machine's constructor (function-scoped fixtures are set up once per test,
not per example, hence the suppressed health check).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import httpx
import hypothesis
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from services.api.app import create_app
from services.flusher.flush import Flusher
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import TABLES
from tests.support.flushers import flusher_of
from tests.support.users import User, create_doc, signup

DOCS = 3
T = TypeVar("T")


@dataclass
class World:
    """What every example shares: one loop, and on it the app, the flusher and the clients."""

    loop: asyncio.AbstractEventLoop
    settings: Settings
    keys: Keys
    client: httpx.AsyncClient
    redis: Redis
    flusher: Flusher
    db: asyncpg.Connection

    def run(self, coro: Awaitable[T]) -> T:
        return self.loop.run_until_complete(coro)


@asynccontextmanager
async def world_on(loop: asyncio.AbstractEventLoop, settings: Settings) -> AsyncIterator[World]:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    async with AsyncExitStack() as stack:
        app = create_app(settings)
        await stack.enter_async_context(app.router.lifespan_context(app))
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        )
        redis = Redis.from_url(settings.state_url, decode_responses=True)
        stack.push_async_callback(redis.aclose)
        flusher = await stack.enter_async_context(flusher_of(settings, redis, keys))
        db = await asyncpg.connect(settings.dsn)
        stack.push_async_callback(db.close)
        yield World(loop, settings, keys, client, redis, flusher, db)


@dataclass
class Doc:
    id: str
    # The acknowledged edits, oldest first: (version, content). The first is the creation.
    acks: list[tuple[int, str]] = field(default_factory=list)
    deleted: bool = False
    # The highest version Postgres was ever seen holding.
    stored: int = 0

    @property
    def last(self) -> tuple[int, str]:
        return self.acks[-1]


class WritePath(RuleBasedStateMachine):
    world: World  # set by the test before hypothesis builds a machine

    def __init__(self) -> None:
        super().__init__()
        self.w = WritePath.world
        self.docs: list[Doc] = []
        self.user: User | None = None
        self.edits = 0

    @initialize()
    def fresh(self) -> None:
        async def reset() -> tuple[User, list[Doc]]:
            await self.w.redis.flushdb()
            await self.w.db.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
            user = await signup(self.w.client, "writer")
            docs = []
            for i in range(DOCS):
                body = await create_doc(self.w.client, user, f"doc {i}", f"created {i}")
                docs.append(Doc(body["id"], [(body["version"], f"created {i}")]))
            return user, docs

        self.user, self.docs = self.w.run(reset())

    # Rules -------------------------------------------------------------------------------
    @rule(i=st.integers(0, DOCS - 1), text=st.text(max_size=40))
    def edit(self, i: int, text: str) -> None:
        doc = self.docs[i]
        self.edits += 1
        content = f"{self.edits}:{text}"
        r = self._call("PUT", f"/v1/documents/{doc.id}/content", {"content": content})
        if "\x00" in content:  # Postgres cannot store a NUL: refused (the body before the id)
            assert r.status_code == 422, r.text
            return
        if doc.deleted:
            assert r.status_code == 404, r.text
            return
        assert r.status_code == 202, r.text
        version = r.json()["version"]
        assert version > doc.last[0], (version, doc.acks)
        doc.acks.append((version, content))

    @rule()
    def flush_pass(self) -> None:
        self.w.run(self.w.flusher.flush_dirty())

    @rule(ticks=st.integers(0, 60))
    def flush_crash(self, ticks: int) -> None:
        """A flush pass that dies part way (the flusher SIGKILLed, as far as Redis and Postgres
        can tell): cancelled after `ticks` turns of the event loop (a whole pass takes about 60
        here), wherever it got to (claim, read, the Postgres write, mark clean). Where exactly
        is up to timing; the invariants must hold at every one of those points."""

        async def crash() -> None:
            task = asyncio.ensure_future(self.w.flusher.flush_dirty())
            for _ in range(ticks):
                if task.done():
                    break
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.w.run(crash())

    @rule(i=st.integers(0, DOCS - 1))
    def flush_one(self, i: int) -> None:
        self.w.run(self.w.flusher.flush_ids([self.docs[i].id]))

    @rule(i=st.integers(0, DOCS - 1))
    def expire_if_clean(self, i: int) -> None:
        """The clean copy leaves Redis, as its TTL makes it (a dirty one never does)."""
        doc = self.docs[i]

        async def expire() -> None:
            key = self.w.keys.doc(doc.id)
            v, sv, deleted = await self.w.redis.hmget(key, ["v", "sv", "del"])
            dirty = await self.w.redis.zscore(
                self.w.keys.dirty(self.w.keys.shard_of(doc.id)), doc.id
            )
            if v is not None and v == sv and deleted is None and dirty is None:
                await self.w.redis.delete(key)

        self.w.run(expire())

    @rule(i=st.integers(0, DOCS - 1))
    def read(self, i: int) -> None:
        doc = self.docs[i]
        r = self._call("GET", f"/v1/documents/{doc.id}")
        if doc.deleted:
            assert r.status_code == 404, r.text
            return
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["version"], body["content"]) == doc.last

    @precondition(lambda self: sum(not d.deleted for d in self.docs) > 1)
    @rule(i=st.integers(0, DOCS - 1))
    def delete(self, i: int) -> None:
        doc = self.docs[i]
        r = self._call("DELETE", f"/v1/documents/{doc.id}")
        assert r.status_code == (404 if doc.deleted else 204), r.text
        doc.deleted = True

    # Invariants --------------------------------------------------------------------------
    @invariant()
    def postgres_never_goes_back(self) -> None:
        rows = self._stored()
        for doc in self.docs:
            if doc.deleted:
                assert doc.id not in rows, f"{doc.id} came back after its delete: {rows[doc.id]}"
                continue
            version, content = rows[doc.id]
            assert version >= doc.stored, (
                f"{doc.id}: Postgres went from v{doc.stored} to v{version}"
            )
            # Whatever Postgres holds was acknowledged, with that very content.
            assert (version, content) in doc.acks, (version, content, doc.acks)
            doc.stored = version

    def teardown(self) -> None:
        if not self.docs:
            return
        self.w.run(self.w.flusher.flush_dirty())
        rows = self._stored()
        for doc in self.docs:
            if not doc.deleted:
                assert rows[doc.id] == doc.last, (doc.id, rows[doc.id], doc.acks)

    # Helpers -----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        assert self.user is not None
        return self.w.run(self.w.client.request(method, path, json=body, headers=self.user.auth))

    def _stored(self) -> dict[str, tuple[int, str]]:
        rows = self.w.run(
            self.w.db.fetch(
                "SELECT id::text AS id, version, content FROM documents WHERE id = any($1::uuid[])",
                [d.id for d in self.docs],
            )
        )
        return {r["id"]: (r["version"], r["content"]) for r in rows}


# Bounded: 20 runs of up to 25 steps (well under a minute on the shared machine).
RUNS = hypothesis.settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # No example database in the worktree: every run draws afresh (failures print their steps).
    database=None,
)


def test_write_path_state_machine(settings: Settings) -> None:
    # A sync test: hypothesis calls the rules synchronously, on a loop of the test's own.
    loop = asyncio.new_event_loop()
    exits = AsyncExitStack()
    try:
        world = exits.enter_async_context(world_on(loop, settings))
        WritePath.world = loop.run_until_complete(world)
        run_state_machine_as_test(WritePath, settings=RUNS)
    finally:
        loop.run_until_complete(exits.aclose())
        loop.close()
