"""Requests aiohttp's HTTP parser refuses before any middleware runs get an OperationOutcome, the security
headers and aiohttp's status, and no log line quotes them (mediator/parse_errors.py).

No HAPI: the app starts with its FHIR store unreachable (it keeps trying), which these answers never need.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import http_parser, web, web_protocol
from aiohttp.web_protocol import RequestHandler

from mediator import parse_errors
from mediator.app import create_app
from mediator.headers import API_CSP
from mediator.logs import JsonFormatter
from tests.conftest import REPO, app_settings

SECRET = "Smith"  # stands for the demographics a malformed request may carry: never answered nor logged
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": API_CSP,
}
LONG = "x" * 9000  # over aiohttp's 8190-byte limits of a request line and of a header
HEADERS_TEXT = "The request's headers or framing are not valid HTTP/1.1"
# (what is wrong, the request's bytes, FHIR issue code, diagnostics) with aiohttp's C parser (its default)
CASES = [
    (
        "a word after the HTTP version",
        f"GET /fhir/Patient?family={SECRET} HTTP/1.1 extra\r\nHost: cr\r\n\r\n",
        "invalid",
        "The request line is not 'METHOD target HTTP/1.x': Expected CRLF after version.",
    ),
    (
        "a header line without a colon",
        f"GET /fhir/Patient HTTP/1.1\r\nHost: cr\r\nFamily {SECRET}\r\n\r\n",
        "invalid",
        f"{HEADERS_TEXT}: Invalid header token.",
    ),
    (
        "a control character in a header value",
        f"GET /fhir/Patient HTTP/1.1\r\nHost: cr\r\nX-Family: {SECRET}\x01\r\n\r\n",
        "invalid",
        f"{HEADERS_TEXT}: Invalid header value char.",
    ),
    (
        "a Content-Length that is not a number",
        f"POST /fhir/Patient HTTP/1.1\r\nHost: cr\r\nContent-Length: {SECRET}\r\n\r\n",
        "invalid",
        f"{HEADERS_TEXT}: Invalid character in Content-Length.",
    ),
    (
        "Content-Length with chunked Transfer-Encoding",
        "POST /fhir/Patient HTTP/1.1\r\nHost: cr\r\nContent-Length: 5\r\n"
        f"Transfer-Encoding: chunked\r\nX-Family: {SECRET}\r\n\r\n",
        "invalid",
        f"{HEADERS_TEXT}: Transfer-Encoding can't be present with Content-Length.",
    ),
    (
        "a request line too long",
        f"GET /fhir/Patient?family={SECRET}{LONG} HTTP/1.1\r\nHost: cr\r\n\r\n",
        "too-long",
        "The request line or a header is longer than this server accepts.",
    ),
    (
        "a header too long",
        f"GET /fhir/Patient HTTP/1.1\r\nHost: cr\r\nX-Family: {SECRET}{LONG}\r\n\r\n",
        "too-long",
        "The request line or a header is longer than this server accepts.",
    ),
    (
        "a method that is not a token",
        f"{SECRET}(GET /fhir/Patient HTTP/1.1\r\nHost: cr\r\n\r\n",
        "invalid",
        "The request method is not valid, or the request is not HTTP: Invalid method encountered.",
    ),
    (
        "a target that is not a URL",
        f"GET http://[{SECRET}/ HTTP/1.1\r\nHost: cr\r\n\r\n",
        "invalid",
        "The request target is not a valid URL.",
    ),
]


@pytest.fixture
def unreachable_hapi() -> Iterator[str]:
    """A FHIR base URL nothing answers: a bound port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"


@pytest.fixture
async def port(unreachable_hapi: str, tmp_path: Path) -> AsyncIterator[int]:
    """The mediator app served by :class:`parse_errors.Runner`, as ``python -m mediator`` serves it."""
    runner = parse_errors.Runner(create_app(app_settings(tmp_path, hapi_base_url=unreachable_hapi)))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def _exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes; the answer, read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split(" ")[1]), headers, body


def _assert_outcome(
    answer: tuple[int, dict[str, str], bytes], code: str, diagnostics: str, name: str = ""
) -> None:
    status, headers, body = answer
    assert status == 400, (name, status, body)
    assert headers["Content-Type"] == "application/fhir+json; charset=utf-8", (name, headers)
    for header, value in SECURITY_HEADERS.items():
        assert headers.get(header) == value, (name, header, headers)
    assert json.loads(body) == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }, name
    assert SECRET.encode() not in body


def _log_text(records: list[logging.LogRecord]) -> str:
    """The records as the mediator writes them (JSON lines) and as a plain formatter would, tracebacks too."""
    plain, structured = logging.Formatter(), JsonFormatter()
    return "\n".join(f"{plain.format(r)}\n{structured.format(r)}" for r in records)


@pytest.mark.parametrize(("name", "request_text", "code", "diagnostics"), CASES, ids=[c[0] for c in CASES])
async def test_a_request_the_http_parser_refuses_gets_an_operation_outcome(
    port: int, caplog: pytest.LogCaptureFixture, name: str, request_text: str, code: str, diagnostics: str
) -> None:
    with caplog.at_level(logging.DEBUG):
        answer = await _exchange(port, request_text.encode("latin-1"))
    _assert_outcome(answer, code, diagnostics, name)
    # the parser's refusal is logged (before the answer is written) by the mediator, once, without the bytes
    refused = [r for r in caplog.records if r.getMessage() == "request refused by the HTTP parser"]
    assert [(r.name, r.levelno, getattr(r, "diagnostics", None)) for r in refused] == [
        ("mediator.parse_errors", logging.INFO, diagnostics)
    ]
    assert SECRET not in _log_text(caplog.records)


BODY_TIMEOUT_S = 30.0  # the body deadline of the app below: an answer well before it is not the 408
CHUNKED_HEAD = (
    "POST /fhir/Patient HTTP/1.1\r\nHost: cr\r\nContent-Type: application/fhir+json\r\n"
    "Transfer-Encoding: chunked\r\n\r\n"
)
FIRST_CHUNK = f'{{"resourceType": "Patient", "name": [{{"family": "{SECRET}"'
# (what is wrong with the second chunk's size line, the line, the parser's words for it)
BAD_CHUNKS = [
    ("not a hex number", f"{SECRET}\r\n", "Invalid character in chunk size"),
    ("too large", f"{'f' * 20}\r\n", "Chunk size overflow"),
]


@pytest.fixture
async def reading(unreachable_hapi: str, tmp_path: Path) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """The mediator app served by :class:`parse_errors.Runner`, with a long body deadline and an event set
    once a request has reached the app (its headers parsed, its body being read)."""
    async with _serving(unreachable_hapi, tmp_path) as served:
        yield served


@pytest.fixture
async def reading_pure_python(
    unreachable_hapi: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[int, asyncio.Event]]:
    """:func:`reading` with aiohttp's pure-Python HTTP parser (``AIOHTTP_NO_EXTENSIONS``, or no C extension
    for the platform), which fails the body itself when a chunk is bad."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    async with _serving(unreachable_hapi, tmp_path) as served:
        yield served


@contextlib.asynccontextmanager
async def _serving(unreachable_hapi: str, tmp_path: Path) -> AsyncIterator[tuple[int, asyncio.Event]]:
    app = create_app(app_settings(tmp_path, hapi_base_url=unreachable_hapi, body_timeout_s=BODY_TIMEOUT_S))
    started = asyncio.Event()

    @web.middleware
    async def signal_start(request: web.Request, handler: Any) -> web.StreamResponse:
        started.set()
        response: web.StreamResponse = await handler(request)
        return response

    app.middlewares.insert(0, signal_start)
    runner = parse_errors.Runner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield int(runner.addresses[0][1]), started
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("name", "size_line", "reason"), BAD_CHUNKS, ids=[c[0] for c in BAD_CHUNKS])
async def test_a_bad_chunk_part_way_through_a_body_gets_a_400_at_once(
    reading: tuple[int, asyncio.Event],
    caplog: pytest.LogCaptureFixture,
    name: str,
    size_line: str,
    reason: str,
) -> None:
    """The first chunk arrives and the handler reads the body; then a chunk size line the parser refuses.
    Without the mediator's protocol the handler would wait for the body until its deadline (408)."""
    with caplog.at_level(logging.DEBUG):
        answer = await _bad_chunk_answer(reading, size_line)
    _assert_outcome(answer, "invalid", f"The request body's framing is not valid: {reason}.", name)
    refused = [r for r in caplog.records if r.getMessage() == "request body refused by the HTTP parser"]
    assert [(r.levelno, getattr(r, "diagnostics", None)) for r in refused] == [
        (logging.INFO, f"The request body's framing is not valid: {reason}.")
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert SECRET not in _log_text(caplog.records)


async def _bad_chunk_answer(
    reading: tuple[int, asyncio.Event], size_line: str
) -> tuple[int, dict[str, str], bytes]:
    """Send a chunked body's first chunk, wait until the app reads it, send a bad chunk size line, and read
    the answer to the end (the server closes the connection): status, headers, body."""
    port, started = reading
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        chunk = FIRST_CHUNK.encode()
        writer.write(CHUNKED_HEAD.encode() + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await asyncio.wait_for(started.wait(), 5)
        writer.write(size_line.encode("latin-1") + b"more\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # read to the end: the server closes
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    return int(status_line.split(" ")[1]), dict(line.split(": ", 1) for line in lines), body


async def test_a_bad_chunk_gets_a_400_at_once_with_the_pure_python_parser_too(
    reading_pure_python: tuple[int, asyncio.Event], caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's pure-Python parser fails the body itself (``TransferEncodingError``, no queued refusal): the
    answer is the same 400, not a 500 with a traceback. (That parser takes the over-long size line of
    :data:`BAD_CHUNKS` as a chunk of 2^80 bytes still to come: the body deadline's case.)"""
    name, size_line, _ = BAD_CHUNKS[0]
    with caplog.at_level(logging.DEBUG):
        answer = await _bad_chunk_answer(reading_pure_python, size_line)
    _assert_outcome(answer, "invalid", "The request body's framing is not valid.", name)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert SECRET not in _log_text(caplog.records)


def test_the_aiohttp_seams_the_hook_uses_are_still_there() -> None:
    """If this fails, an aiohttp upgrade moved what mediator/parse_errors.py overrides: parse errors would get
    aiohttp's plain-text answer again (or the mediator would not start). Re-read web_protocol.py,
    web_server.py and web_runner.py, and move the hook."""
    assert list(inspect.signature(RequestHandler.handle_error).parameters) == [
        "self",
        "request",
        "status",
        "exc",
        "message",
    ]
    # parse errors reach handle_error through the protocol's error handler, in 3.14 as in every 3.x since 3.8
    assert "self.handle_error(" in inspect.getsource(RequestHandler._make_error_handler)
    assert "RequestHandler(self, loop=self._loop, **self._kwargs)" in inspect.getsource(web.Server.__call__)
    assert inspect.isabstract(web.BaseRunner) and "_make_server" in web.BaseRunner.__abstractmethods__
    # a body refused part way: the refusal queued as the next message, the current request's handler running
    assert {"_messages", "_current_request"} <= set(RequestHandler.__slots__)
    assert "(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)" in inspect.getsource(
        RequestHandler.data_received
    )
    assert "self._current_request = request" in inspect.getsource(RequestHandler._handle_request)


async def test_the_runner_serves_with_the_mediator_protocol(unreachable_hapi: str, tmp_path: Path) -> None:
    runner = parse_errors.Runner(create_app(app_settings(tmp_path, hapi_base_url=unreachable_hapi)))
    await runner.setup()
    try:
        server = runner.server
        assert server is not None
        protocol = server()  # what each site makes for a new connection
        assert isinstance(protocol, RequestHandler)
        assert type(protocol).handle_error is not RequestHandler.handle_error
    finally:
        await runner.cleanup()


async def test_python_m_mediator_answers_a_malformed_request_with_an_operation_outcome(
    unreachable_hapi: str, tmp_path: Path
) -> None:
    """``python -m mediator`` as deployed: its own JSON log lines, on a port it picks (CR_PORT=0)."""
    env: dict[str, Any] = {
        **os.environ,
        "CR_HOST": "127.0.0.1",
        "CR_PORT": "0",
        "CR_HAPI_URL": unreachable_hapi,
        "CR_JOBS_DIR": str(tmp_path / "jobs"),
        "CR_ADMIN_USERS_FILE": str(tmp_path / "admin-users.json"),
        "CR_ADMIN_SECRET_FILE": str(tmp_path / "admin-secret.key"),
        "CR_LOG_LEVEL": "DEBUG",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mediator",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:

        async def listening() -> int:
            while line := (await process.stderr.readline()).decode():  # type: ignore[union-attr]
                lines.append(line)
                if '"msg": "listening"' in line:
                    return int(json.loads(line)["port"])
            raise AssertionError(f"the mediator stopped before listening: {lines}")

        port = await asyncio.wait_for(listening(), 60)
        name, request_text, code, diagnostics = CASES[3]
        _assert_outcome(await _exchange(port, request_text.encode("latin-1")), code, diagnostics, name)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    log = "".join(lines) + (rest or b"").decode()
    refused = [json.loads(line) for line in log.splitlines() if "refused by the HTTP parser" in line]
    assert [(r["logger"], r["problem"]) for r in refused] == [("mediator.parse_errors", "BadHttpMessage")]
    assert SECRET not in log
