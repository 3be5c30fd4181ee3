"""`python -m deploy.healthcheck api|matcher|flusher`: the containers' health checks.

The image has no curl, and the ports come from the same Settings the service reads, so a health
check can never probe a port the service does not listen on. Exit 0 healthy, 1 not.
- api: GET /readyz (Redis and Postgres reachable).
- matcher: GET /healthz.
- flusher: arq's health key for the queue exists (a worker wrote it within its health interval).
  Every flusher writes the same key, so this says "the flushers run and reach Redis"; a dead
  container is caught by its exit (the flusher process is PID 1) and `restart: unless-stopped`.
"""

from __future__ import annotations

import asyncio
import sys
import urllib.request

from redis.exceptions import RedisError

from shared.infra.clients import check_client
from shared.settings import Settings
from shared.store.keys import Keys


def http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


async def flusher_ok(settings: Settings) -> bool:
    keys = Keys(settings.key_prefix, settings.doc_shards)
    client = check_client(settings.queue_url, timeout_s=3)
    try:
        return bool(await client.exists(keys.flusher_health))
    except (OSError, RedisError):
        return False
    finally:
        await client.aclose()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("api", "matcher", "flusher"):
        print("usage: python -m deploy.healthcheck api|matcher|flusher", file=sys.stderr)
        return 2
    settings = Settings()
    service = argv[0]
    if service == "api":
        ok = http_ok(settings.api_port, "/readyz")
    elif service == "matcher":
        ok = http_ok(settings.matcher_port, "/healthz")
    else:
        ok = asyncio.run(flusher_ok(settings))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
