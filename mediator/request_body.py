"""The request body from the client's side: a deadline for receiving it (:class:`BodyDeadline`, 408), a body
whose framing broke part way (:class:`BodyFraming`, 400, set on the body by ``parse_errors``), and telling
a client that went away from a server error (:func:`client_gone`, 499). How and why: ``docs/internals.md``
(Request bodies; Requests the HTTP parser refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from .context import SETTINGS
from .errors import RegistryError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UPLOAD_ROUTES = frozenset({"/admin/jobs/bulk"})
CLIENT_CLOSED = 499


class BodyTimeout(RegistryError):
    status = 408
    code = "timeout"


BODY_FRAMING = "The request body's framing is not valid"


class BodyFraming(RegistryError):
    """The HTTP parser refused the body part way (a bad chunk): the rest of it can never be read."""

    status = 400
    code = "invalid"


class BodyDeadline:
    """Started for one request; :meth:`stop` when its handler is done."""

    def __init__(self, request: web.Request, body_s: float, upload_s: float) -> None:
        self.request = request
        self.expired = False
        self._handle: asyncio.TimerHandle | None = None
        resource = request.match_info.route.resource
        seconds = upload_s if resource is not None and resource.canonical in UPLOAD_ROUTES else body_s
        if request.body_exists and seconds > 0 and not request.content.is_eof():
            self._handle = asyncio.get_running_loop().call_later(seconds, self._expire, seconds)

    def _expire(self, seconds: float) -> None:
        content = self.request.content
        if content.is_eof() or content.exception() is not None:
            return  # all there (or the client already left)
        self.expired = True
        content.set_exception(BodyTimeout(f"The request body did not arrive within {seconds:g} s."))

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def unfinished(self) -> bool:
        """The body will never be read to its end: it came too late, or its framing broke."""
        return self.expired or self.request.content.exception() is not None

    async def close_after(self, response: web.StreamResponse) -> None:
        """Send ``response`` now and close the connection: the rest of the body is still on its way, or
        cannot be told from what follows it."""
        with contextlib.suppress(ConnectionError):
            await response.prepare(self.request)
            await response.write_eof()
        self.request.protocol.force_close()


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware (outside the OpenHIM envelope and the error middleware, which turns
    :class:`BodyTimeout` into the 408 answer and :class:`BodyFraming` into the 400)."""
    settings = request.config_dict[SETTINGS]
    deadline = BodyDeadline(request, settings.body_timeout_s, settings.upload_timeout_s)
    try:
        response = await handler(request)
    finally:
        deadline.stop()
    if deadline.unfinished():
        await deadline.close_after(response)
    return response


def client_gone(request: web.Request, error: BaseException) -> bool:
    """``error`` is the client's connection closing under the request (not a failure of ours)."""
    if not isinstance(error, ConnectionResetError):
        return False
    transport = request.transport
    return transport is None or transport.is_closing()
