"""``python -m mediator``: run the registry mediator with settings from the environment."""

from __future__ import annotations

import logging

from aiohttp import web

from . import logs
from .admin.auth import with_secret_key
from .app import create_app
from .settings import Settings


def main() -> None:
    # the admin session key: CR_ADMIN_SECRET_KEY, else read from (or generated into) CR_ADMIN_SECRET_FILE
    settings = with_secret_key(Settings.from_env())
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
