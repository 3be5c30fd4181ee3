"""Run the flusher: `python -m services.flusher`."""

from services.flusher.worker import create_worker
from shared.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level, access_log=settings.access_log)
    create_worker(settings).run()


if __name__ == "__main__":
    main()
