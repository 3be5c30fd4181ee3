"""Run the flusher: `python -m services.flusher`."""

import asyncio

from services.flusher.resilient import wait_for_dependencies
from services.flusher.worker import create_worker
from shared.infra.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, access_log=settings.access_log)
    # Started during an outage, wait for Redis and Postgres rather than exit (and crash-loop under
    # a supervisor). Before the worker exists: a SIGTERM now just ends the process, as nothing is
    # in flight yet.
    asyncio.run(wait_for_dependencies(settings))
    create_worker(settings).run()


if __name__ == "__main__":
    main()
