"""Run the API: `python -m services.api`."""

import uvicorn

from services.api.app import create_app
from shared.logs import configure_logging
from shared.settings import Settings


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        ws="none",
    )


if __name__ == "__main__":
    main()
