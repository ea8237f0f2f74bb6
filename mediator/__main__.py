"""``python -m mediator``: run the registry mediator with settings from the environment."""

from __future__ import annotations

import logging

from aiohttp import web

from . import logs
from .app import create_app
from .settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logs.configure(settings.log_level)
    logging.getLogger(__name__).info(
        "starting mediator",
        extra={
            "port": settings.port,
            "hapi": settings.hapi_base_url,
            "openhim": bool(settings.openhim_api_url),
        },
    )
    web.run_app(create_app(settings), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
