"""`python -m deploy.migrate`: apply pending migrations to REDLINE_DATABASE_URL, then exit.

The services never migrate at start; compose runs this once before them (and `make run` does the
same in deploy/run.py). It is safe to run concurrently: migrations apply under an advisory lock.
"""

from __future__ import annotations

import asyncio
import sys

from shared.settings import Settings
from shared.store.migrations import migrate_url


def main() -> int:
    settings = Settings()
    if settings.database_url is None:
        raise SystemExit("REDLINE_DATABASE_URL is not set: nothing to migrate")
    applied = asyncio.run(migrate_url(settings.dsn))
    print(f"migrations: {', '.join(applied) if applied else 'up to date'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
