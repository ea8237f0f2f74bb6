"""``Runner``: ``web.AppRunner`` whose connections answer a request aiohttp's HTTP parser refuses (malformed
request line or header, bad Content-Length, line too long) with an OperationOutcome and the security headers,
and log the problem, never the request's bytes; and fail the body of a request being handled when the parser
refuses its framing part way (a bad chunk), so the handler answers 400 at once. docs/internals.md: Requests
the HTTP parser refuses."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest

from .errors import operation_outcome
from .handlers import fhir_response
from .headers import set_security_headers
from .request_body import BODY_FRAMING, BodyFraming

log = logging.getLogger(__name__)

# the most specific first: (class, FHIR issue code, what is wrong); aiohttp's messages quote the request
_PROBLEMS: tuple[tuple[type[HttpProcessingError], str, str], ...] = (
    (LineTooLong, "too-long", "The request line or a header is longer than this server accepts"),
    (BadHttpMethod, "invalid", "The request method is not valid, or the request is not HTTP"),
    (BadStatusLine, "invalid", "The request line is not 'METHOD target HTTP/1.x'"),
    (InvalidURLError, "invalid", "The request target is not a valid URL"),
    (InvalidHeader, "invalid", "A header is not valid"),
    (PayloadEncodingError, "invalid", BODY_FRAMING),
    (BadHttpMessage, "invalid", "The request's headers or framing are not valid HTTP/1.1"),
)
# the parser's own words for the problem (llhttp's error reasons, aiohttp's), said back when a line of its
# message is one of them: fixed texts, never the request's bytes, which the message quotes on other lines
_REASONS = frozenset(
    {
        "Expected CRLF after version",
        "Expected HTTP/, RTSP/ or ICE/",
        "Expected space after method",
        "Invalid HTTP version",
        "Invalid major version",
        "Invalid minor version",
        "Invalid method encountered",
        "Received HTTPS traffic on an HTTP port",
        "Unexpected space after start line",
        "Invalid characters in url",
        "Invalid char in url path",
        "Invalid char in url query",
        "Unexpected start char in url",
        "Invalid header token",
        "Invalid header field char",
        "Invalid header value char",
        "Missing expected CR after header value",
        "Missing expected LF after header value",
        "Unexpected whitespace after header value",
        "Too many headers received",
        "Invalid character in Content-Length",
        "Content-Length overflow",
        "Duplicate Content-Length",
        "Transfer-Encoding can't be present with Content-Length",
        "Content-Length can't be present with Transfer-Encoding",
        "Invalid `Transfer-Encoding` header value",
        "Request has invalid `Transfer-Encoding`",
        "Invalid character in chunk size",
        "Chunk size overflow",
        "Missing expected CR after chunk size",
        "Expected LF after chunk size",
    }
)


def _diagnostics(exc: HttpProcessingError) -> tuple[str, str]:
    """(FHIR issue code, diagnostics) for a request the parser refused with ``exc``."""
    code, text = next(
        ((code, text) for kind, code, text in _PROBLEMS if isinstance(exc, kind)),
        ("invalid", "The request is not valid HTTP/1.1"),
    )
    return code, _in_its_words(text, exc)


def _in_its_words(text: str, exc: HttpProcessingError) -> str:
    """``text``, then the parser's own words for the problem when a line of its message is one of them."""
    lines = (line.strip().rstrip(":") for line in exc.message.splitlines())
    reason = next((line for line in lines if line in _REASONS), None)
    return f"{text}: {reason}." if reason else f"{text}."


# Why private seams: aiohttp answers these requests inside its connection protocol
# (RequestHandler.handle_error, called from _make_error_handler) in plain text quoting the bytes, and logs
# them; no middleware or on_response_prepare runs, and aiohttp 3.14 has no documented hook for it
# (aio-libs/aiohttp#3287). So we override handle_error (public name, undocumented), have Server.__call__
# build our protocol (from Server's private _loop and _kwargs, as aiohttp's own does) and
# AppRunner._make_server (BaseRunner's abstract factory) hand that server to the sites.
# A body refused part way: aiohttp's C parser drops the body stream it was feeding and raises, and
# data_received queues the error as the next message (an _ErrInfo in _messages), answered only after the
# handler of the current request (_current_request) returns; that handler waits on a stream nothing will feed
# again, until the body deadline. So data_received is extended: when it queued a refusal while a handler
# reads an unfinished body, that body is failed (StreamReader.set_exception, public) and the connection
# closed after the answer (request_body.body_deadline), the queued refusal never answered.
# tests/mediator/test_parse_errors.py fails if an aiohttp upgrade moves any of these.
class _Protocol(RequestHandler):
    """One connection: aiohttp's protocol, its own error answers made OperationOutcomes."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        if len(self._messages) == queued:
            return
        refused, request = self._messages[-1][0], self._current_request  # parsing stops at a refusal: last
        if not isinstance(refused, _ErrInfo) or not isinstance(refused.exc, HttpProcessingError):
            return
        if request is None or request.content.is_eof() or request.content.exception() is not None:
            return  # no handler waits for the body: the refusal is answered as its own message
        text = _in_its_words(BODY_FRAMING, refused.exc)  # part way through a body: the body's framing
        log.info(
            "request body refused by the HTTP parser",
            extra={"status": 400, "problem": type(refused.exc).__name__, "diagnostics": text},
        )
        request.content.set_exception(BodyFraming(text))
        self.close()  # after this request's answer: what follows the refused bytes cannot be read

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):  # raised past every middleware (500, 504): aiohttp's
            return super().handle_error(request, status, exc, message)
        # the parser refused the request: no app has seen it
        code, text = _diagnostics(exc)
        code = {413: "too-costly", 431: "too-long"}.get(status, code)
        # not aiohttp's log line: the exception's message and traceback quote the request's bytes
        log.info(
            "request refused by the HTTP parser",
            extra={"status": status, "problem": type(exc).__name__, "diagnostics": text},
        )
        response = fhir_response(operation_outcome("error", code, text), status=status)
        set_security_headers(response)  # no app's on_response_prepare runs for this answer
        response.force_close()  # as aiohttp's: the parser's state is lost, and the connection with it
        return response


class _Server(web.Server):
    """aiohttp's server (the app's handler, request factory and handler_args) making ``_Protocol``s."""

    def __call__(self) -> RequestHandler:
        # aiohttp's own Server.__call__, with our class; its fallback for bad handler_args left out
        return _Protocol(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """``web.AppRunner`` serving the app with ``_Protocol`` connections."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()  # what the app builds, with everything it configures
        server.__class__ = _Server  # same object and state, our protocol factory (_Server adds no state)
        return server
