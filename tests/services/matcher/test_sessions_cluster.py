"""The session tests in cluster mode (state on a real 3-master Valkey cluster): revocations are
heard through `Accounts._subscriber`, a plain connection to one node (classic pub/sub is
broadcast over the cluster bus), and the per-session PTTL checks go through the cluster client."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT
from tests.deploy.cluster.conftest import empty_cluster, keys, redis, settings  # noqa: F401
from tests.services.matcher.test_sessions import (  # noqa: F401  (collected here, in cluster mode)
    four_sockets,
    test_an_expired_session_ends_its_sockets,
    test_logout_ends_the_sessions_sockets_on_every_process_within_a_second,
)
from tests.support.valkeys import Cluster, valkey_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Its own cluster and data directory: the deploy suite's session-scoped one is defined in
    # its conftest, and a second instance of that fixture would reuse its (non-empty) nodes' dir.
    with valkey_cluster(ROOT / ".data" / f"test-{os.getpid()}-matcher-cluster") as started:
        yield started
