"""``python -m mediator``: run the registry mediator with settings from the environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from . import logs
from .admin.auth import with_secret_key
from .app import create_app
from .parse_errors import Runner
from .settings import Settings

log = logging.getLogger(__name__)


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, as ``web.run_app`` does with its defaults, but with
    :class:`Runner` (``run_app`` takes no runner): requests the HTTP parser refuses get OperationOutcomes."""
    runner = Runner(app, handle_signals=True, keepalive_timeout=75.0)  # run_app's keep-alive, not 3630 s
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("listening", extra={"port": runner.addresses[0][1]})  # the bound one when CR_PORT is 0
        await asyncio.Event().wait()  # a signal raises GracefulExit out of the loop; asyncio.run cancels us
    finally:
        await runner.cleanup()


def main() -> None:
    # the admin session key: CR_ADMIN_SECRET_KEY, else read from (or generated into) CR_ADMIN_SECRET_FILE
    settings = with_secret_key(Settings.from_env())
    logs.configure(settings.log_level)
    log.info(
        "starting mediator",
        extra={
            "port": settings.port,
            "hapi": settings.hapi_base_url,
            "openhim": bool(settings.openhim_api_url),
        },
    )
    app = create_app(settings)
    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(serve(app, settings.host, settings.port))


if __name__ == "__main__":
    main()
