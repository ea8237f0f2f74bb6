"""Clients that go away mid-body or send it too slowly: a disconnect is one INFO line and no 500; a body that
does not arrive within CR_BODY_TIMEOUT_S gets 408 with an OperationOutcome and the connection is closed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from mediator import parse_errors
from mediator.app import create_app
from mediator.settings import Settings
from tests.conftest import metric_samples, patient, unique_surname


class Records(logging.Handler):
    """Every log record of the test; :meth:`answered` waits for the mediator's one line about ``path``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.changed.set()

    def about(self, path: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "path", None) == path]

    async def answered(self, path: str) -> logging.LogRecord:
        async def wait() -> logging.LogRecord:
            while True:
                done = [r for r in self.about(path) if getattr(r, "status", None) is not None]
                if done:
                    return done[0]
                self.changed.clear()
                await self.changed.wait()

        return await asyncio.wait_for(wait(), 60)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Settings], object]]:
    """Start the mediator as ``python -m mediator`` does (``parse_errors.Runner``: a handler is not cancelled
    when its client goes away; aiohttp's test server would cancel it); gives its port."""
    runners: list[web.AppRunner] = []

    async def start(settings: Settings) -> int:
        runner = parse_errors.Runner(create_app(settings), handler_cancellation=False)
        runners.append(runner)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


def _head(path: str, length: int, content_type: str = "application/fhir+json", expect: bool = False) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
        + ("Expect: 100-continue\r\n" if expect else "")
        + "\r\n"
    ).encode()


async def test_a_client_leaving_mid_body_is_one_info_line_and_no_500(serve, settings, facility, records):
    port = await serve(settings)
    body = json.dumps(patient(facility, "L1", family=unique_surname())).encode()
    for path in ("/fhir/Patient", "/admin/api/login"):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        content_type = "application/json" if path.startswith("/admin") else "application/fhir+json"
        writer.write(_head(path, len(body), content_type, expect=True))
        # aiohttp answers 100 Continue once the request is being handled: then part of the body, and gone
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body[:40])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        line = await records.answered(path)
        assert line.levelno == logging.INFO and line.getMessage() == "client disconnected", line.getMessage()
        assert [r.getMessage() for r in records.about(path)] == ["client disconnected"]
    assert not [r for r in records.records if r.levelno >= logging.WARNING], records.records
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        samples = metric_samples(await resp.text())
    statuses = {dict(labels)["status"] for (name, labels) in samples if name == "cr_http_requests_total"}
    assert "500" not in statuses and "499" in statuses, statuses


async def test_a_body_slower_than_the_deadline_gets_408_and_the_connection_closes(
    serve, settings, facility, records
):
    port = await serve(dataclasses.replace(settings, body_timeout_s=0.5))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_head("/fhir/Patient", 1000) + b'{"resourceType": "Pat')  # and then nothing more
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 30)  # until the server closes the connection
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    outcome = json.loads(payload)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "timeout"
    line = await records.answered("/fhir/Patient")
    assert line.getMessage() == "request" and line.status == 408  # type: ignore[attr-defined]
    assert not [r for r in records.records if r.levelno >= logging.WARNING], records.records
    # a body that arrives in time is not affected by the deadline, however long the submission then takes
    async with aiohttp.ClientSession() as http:
        submission = patient(facility, "S1", family=unique_surname())
        async with http.post(f"http://127.0.0.1:{port}/fhir/Patient", json=submission) as resp:
            assert resp.status == 201, await resp.text()


def test_body_deadlines_are_settings():
    s = Settings.from_env({"CR_BODY_TIMEOUT_S": "5", "CR_UPLOAD_TIMEOUT_S": "600"})
    assert (s.body_timeout_s, s.upload_timeout_s) == (5.0, 600.0)
    assert (Settings().body_timeout_s, Settings().upload_timeout_s) == (60.0, 3600.0)


async def test_an_upload_past_its_deadline_gets_408_and_leaves_no_partial_file(
    serve, settings, records, tmp_path
):
    from cryptography.fernet import Fernet

    from mediator.admin.users import UserStore
    from mediator.settings import AdminSettings

    users, jobs = tmp_path / "users.json", tmp_path / "jobs"
    UserStore(users).set_password("alice", "correct horse battery staple")
    admin = AdminSettings(users_file=users, secret_key=Fernet.generate_key())
    port = await serve(dataclasses.replace(settings, upload_timeout_s=2.0, admin=admin, jobs_dir=jobs))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        login = {"username": "alice", "password": "correct horse battery staple"}
        async with http.post(f"{base}/admin/api/login", json=login) as resp:
            csrf = (await resp.json())["csrf"]
        cookie = http.cookie_jar.filter_cookies(URL(base + "/admin/"))["cr_admin"].value
    part = (
        b'--XYZ\r\nContent-Disposition: form-data; name="file"; filename="people.ndjson"\r\n'
        b"Content-Type: application/x-ndjson\r\n\r\n" + b'{"resourceType": "Patient"}\n' * 40
    )
    head = (
        "POST /admin/jobs/bulk HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=XYZ\r\n"
        f"Content-Length: 10000000\r\nCookie: cr_admin={cookie}\r\nX-CSRF-Token: {csrf}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + part)  # a tenth of a megabyte of the ten announced, then nothing
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert (await records.answered("/admin/jobs/bulk")).status == 408  # type: ignore[attr-defined]
    assert not list((jobs / "uploads").glob("*")), "the partial upload is removed"
    assert not [r for r in records.records if r.levelno >= logging.WARNING], records.records
