"""Profile cache warming: preload the profiles of recently seen users, so the first read after a
cache restart or an eviction is a hit. Runs every `warm_interval_s` (cron in worker.py)."""

from __future__ import annotations

import logging
import time

from services.flusher.context import Ctx
from services.flusher.flush import TRANSIENT
from shared.domain.profile_cache import ProfileCache
from shared.settings import Settings

log = logging.getLogger("redline.flusher")


async def warm_profiles(ctx: Ctx) -> int:
    """Warm up to `warm_limit` profiles not cached yet; returns how many were stored."""
    settings: Settings = ctx["settings"]
    profiles: ProfileCache = ctx["profiles"]
    started = time.perf_counter()
    try:
        warmed = await profiles.warm(settings.warm_limit)
    except TRANSIENT as exc:
        # A cold cache only costs misses; the next tick tries again.
        log.warning("profile warming skipped: %s: %s", type(exc).__name__, exc)
        return 0
    log.info("warmed %d profiles in %.3fs", warmed, time.perf_counter() - started)
    return warmed
