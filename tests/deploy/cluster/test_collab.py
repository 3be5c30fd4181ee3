"""Co-editing on a real 3-primary Redis Cluster (issue 12): every key a collab script touches
carries the document's shard tag, so the append, seed, read and trim scripts run unchanged on
whichever node holds the document, and the relay between api processes (PUBLISH from the append
script, heard by each process's subscriber on one node) crosses the cluster bus.

The api suite's socket tests and the flusher's compaction tests run here as they are, with this
folder's cluster-mode fixtures (conftest.py); the scenarios below add many clients through two
api processes on documents spread over all three primaries, with the flusher folding while they
type.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import cast

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from services.flusher.flush import Flusher
from shared.infra.clients import redis_client
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.update_log import UpdateLog, append_options
from tests.services.api.conftest import collab_settings, host, http  # noqa: F401
from tests.services.api.test_collab import (  # noqa: F401  (collected here, in cluster mode)
    test_a_late_joiner_gets_the_whole_document,
    test_a_long_document_opens_again_once_its_yjs_state_is_stored,
    test_a_refused_update_is_not_relayed_and_the_resync_resends_it,
    test_editors_on_two_api_processes_converge,
    test_two_editors_typing_at_once_converge_with_nothing_lost,
)
from tests.services.flusher.test_compaction import (  # noqa: F401
    test_a_stale_base_version_of_a_co_edited_document_is_409,
    test_an_update_appended_while_the_flush_writes_waits_for_the_next_flush,
    test_socket_and_http_edits_merge_and_the_flush_folds_them_into_postgres,
)
from tests.support.collab import AnyTypist, HttpTypist, Typist, api_server, tokens
from tests.support.users import User, create_doc, edit, signup

pytestmark = pytest.mark.cluster

PREFIX = "on the cluster>"


@pytest.fixture
async def updates(settings: Settings, keys: Keys) -> AsyncIterator[UpdateLog]:
    """The compaction tests' update log, on a cluster client."""
    client = redis_client(settings.state_url, cluster=True, binary=True)
    yield UpdateLog(client, keys, append_options(settings))
    await client.aclose()


async def docs_on_every_node(
    client: httpx.AsyncClient, user: User, cluster: RedisCluster, keys: Keys
) -> list[str]:
    """One document on each primary (created until all three are covered), holding PREFIX."""
    await cluster.initialize()
    by_node: dict[str, str] = {}
    for _ in range(60):
        doc_id = (await create_doc(client, user, title=str(uuid.uuid4())))["id"]
        node = cluster.get_node_from_key(keys.doc(doc_id))
        assert node is not None
        by_node.setdefault(node.name, doc_id)
        if len(by_node) == 3:
            break
    assert len(by_node) == 3, f"documents landed on {sorted(by_node)} only"
    for doc_id in by_node.values():
        assert (await edit(client, user, doc_id, PREFIX)).status_code == 202
    return list(by_node.values())


def one_slot(cluster: RedisCluster, keys: Keys, doc_id: str, user_id: str) -> None:
    """Every key the collab scripts touch for the document, in the document's slot."""
    touched = (
        keys.doc(doc_id),
        keys.doc_dirty(doc_id),
        keys.update_log(doc_id),
        keys.edit_rate(doc_id, user_id),
        keys.doc_events(doc_id),
        keys.doc_quarantine(doc_id),
    )
    slots = {cluster.keyslot(k) for k in touched}
    assert len(slots) == 1, dict(zip(touched, (cluster.keyslot(k) for k in touched), strict=True))


async def converged_texts(
    client: httpx.AsyncClient, user: User, typists: dict[str, list[Typist]], within_s: float = 15
) -> dict[str, str]:
    """Until every document's typists agree with each other and with GET; the texts."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        finals: dict[str, str] = {}
        for doc_id, ts in typists.items():
            texts = {t.current for t in ts}
            r = await client.get(f"/v1/documents/{doc_id}", headers=user.auth)
            assert r.status_code == 200, r.text
            if len(texts) == 1 and all(t.synced for t in ts) and r.json()["content"] in texts:
                finals[doc_id] = r.json()["content"]
        if len(finals) == len(typists):
            return finals
        assert loop.time() < deadline, f"not converged within {within_s:.0f}s"
        await asyncio.sleep(0.05)


async def test_many_clients_through_two_api_processes_converge_and_compact_on_the_cluster(
    collab_settings: Settings,  # noqa: F811  (the imported fixture)
    flusher: Flusher,
    redis: Redis,
    keys: Keys,
    db: asyncpg.Connection,
) -> None:
    """Four socket typists and an HTTP editor on each of three documents (one per primary),
    through two api processes, while the flusher folds every 300 ms: they converge on one text,
    GET returns it, Postgres holds it after the last flush, the logs are trimmed to nothing, and
    every acknowledged token is there once."""
    cluster = cast(RedisCluster, redis)
    async with (
        api_server(collab_settings) as one,
        api_server(collab_settings) as two,
        httpx.AsyncClient(base_url=f"http://{one}", timeout=10) as client,
    ):
        ada = await signup(client, "ada")
        doc_ids = await docs_on_every_node(client, ada, cluster, keys)
        hosts = [one, two]
        typists = {
            d: [
                Typist(f"c{i}d{n}", hosts[i % 2 :] + hosts[: i % 2], ada, d, prefix=PREFIX, seed=i)
                for i in range(4)
            ]
            for n, d in enumerate(doc_ids)
        }
        editors = [HttpTypist(f"h{n}", hosts, ada, d, prefix=PREFIX) for n, d in enumerate(doc_ids)]
        everyone: list[AnyTypist] = [*(t for ts in typists.values() for t in ts), *editors]
        folded = 0
        try:
            for _ in range(8):  # about 2.4 s of typing, flushed as it goes
                await asyncio.sleep(0.3)
                folded += (await flusher.flush_dirty()).written
            for t in everyone:
                t.stop_typing()
            # The HTTP editors' last PUT lands before the texts are compared.
            await asyncio.gather(*(e.close() for e in editors))
            finals = await converged_texts(client, ada, typists)
        finally:
            await asyncio.gather(*(t.close() for t in everyone))
        assert folded > 0, "the flusher never wrote while they typed"
        await flusher.flush_dirty()
        acked = lost = 0
        for n, doc_id in enumerate(doc_ids):
            one_slot(cluster, keys, doc_id, ada.user_id)
            row = await db.fetchrow(
                "SELECT content, version, ylog FROM documents WHERE id = $1", doc_id
            )
            assert row is not None and row["content"] == finals[doc_id]
            assert row["ylog"] is not None, "written as a co-edited document"
            assert await redis.xlen(keys.update_log(doc_id)) == 0, "folded entries are trimmed"
            assert await redis.zscore(keys.doc_dirty(doc_id), doc_id) is None
            found = tokens(finals[doc_id], PREFIX)
            assert max(found.values()) == 1, "a token typed once is there twice"
            of_doc: list[AnyTypist] = [*typists[doc_id], editors[n]]
            for t in of_doc:
                acked += len(t.acked)
                lost += sum(1 for tok in t.acked if not found[tok])
            for t in typists[doc_id]:
                assert all(found[tok] for tok in t.typed), f"{t.name}'s text is not the server's"
        print(f"cluster co-editing: lost/acked = {lost}/{acked} over 3 documents on 3 primaries")
        assert acked > 0 and lost == 0
        assert all(e.acked for e in editors), [dict(e.answers) for e in editors]


async def test_a_typist_on_each_primary_sees_the_others_documents_relayed_across_nodes(
    collab_settings: Settings,  # noqa: F811
    redis: Redis,
    keys: Keys,
) -> None:
    """Each api process subscribes through one node; the append script publishes on whichever
    node holds the document. A socket on one process still hears every document's updates
    from the other process (the cluster bus carries PUBLISH to every node)."""
    cluster = cast(RedisCluster, redis)
    rng = random.Random(1)
    async with (
        api_server(collab_settings) as one,
        api_server(collab_settings) as two,
        httpx.AsyncClient(base_url=f"http://{one}", timeout=10) as client,
    ):
        ada = await signup(client, "ada")
        doc_ids = await docs_on_every_node(client, ada, cluster, keys)
        writers = {
            d: Typist(f"w{n}", [one], ada, d, prefix=PREFIX, seed=n) for n, d in enumerate(doc_ids)
        }
        readers = {
            d: Typist(f"r{n}", [two], ada, d, prefix=PREFIX, typing=False)
            for n, d in enumerate(doc_ids)
        }
        try:
            await asyncio.sleep(1.0 + rng.random() * 0.2)
            for w in writers.values():
                w.stop_typing()
            finals = await converged_texts(
                client, ada, {d: [writers[d], readers[d]] for d in doc_ids}
            )
        finally:
            await asyncio.gather(*(t.close() for t in [*writers.values(), *readers.values()]))
        for doc_id in doc_ids:
            w = writers[doc_id]
            assert w.acked, f"{w.name} typed nothing acknowledged"
            found = tokens(finals[doc_id], PREFIX)
            assert all(found[tok] == 1 for tok in w.acked)
            assert readers[doc_id].connections == 1, "the reader stayed on its one socket"
