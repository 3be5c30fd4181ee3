"""What the matcher's lifespan opens and both endpoints use: one object, passed to each endpoint.

Each endpoint owns only its own listener (the match endpoint its pub/sub hub, the events
endpoint its stream reader); what they share is here, the session watcher included.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from services.matcher.sessions import SessionWatch
from shared.domain.accounts import Accounts
from shared.domain.documents import Documents
from shared.infra.metrics import MatcherMetrics
from shared.settings import Settings
from shared.store.keys import Keys
from shared.store.scripts import Scripts


@dataclass(frozen=True)
class Resources:
    settings: Settings
    keys: Keys
    state: Redis
    db: asyncpg.Pool
    scripts: Scripts
    accounts: Accounts
    documents: Documents
    metrics: MatcherMetrics
    sessions: SessionWatch
