"""The write-behind scenarios on a real 3-master Redis Cluster (docs/deploy.md: every script and
multi-key call shares a hash tag, so it runs unchanged on a cluster).

The scenario tests are the suite's own, imported here so that they run with this folder's
cluster-mode fixtures (conftest.py): edits and read-your-writes through the API, flushes that
persist, an edit during a flush that stays dirty, racing flushers, a delete racing a flush, the
worker's jobs and its drain on shutdown. The matching scenarios are in test_cluster_matching.py.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared.infra.clients import redis_client
from shared.settings import Settings
from shared.store.keys import Keys
from tests.conftest import Servers, make_settings
from tests.services.api.test_documents import (  # noqa: F401  (collected here, in cluster mode)
    test_create_edit_read_your_writes,
    test_delete,
    test_list_is_paginated_newest_first_and_shows_live_versions,
    test_presence_and_status,
    test_reads_and_edits_reload_from_postgres_when_redis_dropped_the_clean_copy,
    test_stale_base_version_is_409_with_current_version,
)
from tests.services.flusher.conftest import ctx, queue  # noqa: F401
from tests.services.flusher.test_flush import (  # noqa: F401
    test_batches_sharing_rows_take_their_locks_in_one_order,
    test_concurrent_flushes_of_many_documents_agree,
    test_delete_racing_a_flush_is_never_resurrected,
    test_edit_during_flush_stays_dirty_and_is_flushed_next_time,
    test_flush_persists_and_marks_clean,
    test_racing_flushers_never_write_older_over_newer,
)
from tests.services.flusher.test_worker import (  # noqa: F401
    test_cron_flush_job_flushes_everything_dirty,
    test_last_editor_leaving_enqueues_one_deduplicated_flush,
    test_shutdown_drains_every_dirty_document,
)
from tests.support.users import create_doc, edit, signup

pytestmark = pytest.mark.cluster


def test_cluster_mode_needs_its_own_queue_redis(migrated: Servers) -> None:
    with pytest.raises(ValueError, match="REDLINE_QUEUE_REDIS_URL"):
        make_settings(migrated, redis_cluster=True)


def test_the_state_client_is_a_cluster_client(settings: Settings) -> None:
    assert isinstance(redis_client(settings.state_url, cluster=True), RedisCluster)
    assert not isinstance(redis_client(settings.queue_url), RedisCluster)


async def test_documents_spread_over_every_node_and_each_edit_stays_on_one(
    api: httpx.AsyncClient, redis: Redis, keys: Keys
) -> None:
    """Not a cluster in name only: documents land on all three primaries, and a document's hash
    and its shard's dirty index are always on the same node (one slot)."""
    cluster = redis
    assert isinstance(cluster, RedisCluster)
    await cluster.initialize()  # learn the slot map
    alice = await signup(api, "alice")
    nodes = set()
    for _ in range(24):
        doc_id = (await create_doc(api, alice, title=str(uuid.uuid4())))["id"]
        assert (await edit(api, alice, doc_id, "x")).status_code == 202
        slot = cluster.keyslot(keys.doc(doc_id))
        assert (
            slot == cluster.keyslot(keys.doc_dirty(doc_id)) == cluster.keyslot(keys.editors(doc_id))
        )
        nodes.add(cluster.get_node_from_key(keys.doc(doc_id)).name)
    assert len(nodes) == 3
