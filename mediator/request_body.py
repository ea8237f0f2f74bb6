"""The request body from the client's side: a deadline for receiving it, and telling a client that went away
from a server error.

* :class:`BodyDeadline`: the whole body must have arrived within ``CR_BODY_TIMEOUT_S`` (60 s) of the handler
  starting — ``CR_UPLOAD_TIMEOUT_S`` (3600 s) for the admin bulk upload (up to 512 MB, behind a login). When
  it has not, the body stream is failed with :class:`BodyTimeout`, so whatever reads it (FHIR JSON, an admin
  form, a multipart upload) stops; the answer is a 408 ``OperationOutcome`` and the connection is closed
  (the rest of the body is never read). A body that arrived in time is never touched, however long the
  handler then works.
* :func:`client_gone`: reading the body raised ``ConnectionResetError`` because the client closed the
  connection (aiohttp fails the body stream with it). That is the client's doing, not a server error: the
  error middleware logs it once at INFO and counts it as 499 (nginx's "client closed request").
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from .errors import RegistryError

UPLOAD_ROUTES = frozenset({"/admin/jobs/bulk"})
CLIENT_CLOSED = 499


class BodyTimeout(RegistryError):
    status = 408
    code = "timeout"


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

    async def close_after(self, response: web.StreamResponse) -> None:
        """Send ``response`` now and close the connection: the rest of the body is still on its way."""
        with contextlib.suppress(ConnectionError):
            await response.prepare(self.request)
            await response.write_eof()
        self.request.protocol.force_close()


def client_gone(request: web.Request, error: BaseException) -> bool:
    """``error`` is the client's connection closing under the request (not a failure of ours)."""
    if not isinstance(error, ConnectionResetError):
        return False
    transport = request.transport
    return transport is None or transport.is_closing()
