"""The session tests in cluster mode (state on a real 3-master Valkey cluster): revocations are
heard through `Accounts._subscriber`, a plain connection to one node (classic pub/sub is
broadcast over the cluster bus), and the per-session PTTL checks go through the cluster client."""

from __future__ import annotations

from tests.deploy.cluster.conftest import cluster, empty_cluster, keys, redis, settings  # noqa: F401
from tests.services.matcher.test_sessions import (  # noqa: F401  (collected here, in cluster mode)
    four_sockets,
    test_an_expired_session_ends_its_sockets,
    test_logout_ends_the_sessions_sockets_on_every_process_within_a_second,
)
