"""Fixtures for the OpenHIM integration tests: the core emulator and a mediator app registered with it."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from mediator.app import create_app
from mediator.openhim import OPENHIM, OpenHIMLink
from mediator.settings import Settings
from tests.conftest import app_settings
from tests.openhim_emulator import ROOT_PASSWORD, CoreEmulator, free_port

WAIT_S = 10.0  # upper bound for every wait on a condition; a passing test waits a few heartbeats
URN = "urn:mediator:client-registry"  # mediator-config.json


@pytest.fixture
async def core() -> AsyncIterator[CoreEmulator]:
    emulator = CoreEmulator()
    await emulator.start()
    yield emulator
    await emulator.stop()


def forget_stored_config(hapi_url: str) -> None:
    """Delete the console config a mediator kept in the test HAPI (mediator/openhim_state.py)."""
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    try:
        with urlopen(Request(f"{hapi_url}/Basic/cr-openhim-config", method="DELETE"), timeout=30):
            pass
    except (HTTPError, URLError):
        pass


@pytest.fixture(autouse=True)
def _no_stored_openhim_config(request: pytest.FixtureRequest) -> Iterator[None]:
    """A mediator behind the emulator keeps its console config in the shared test HAPI: every test starts
    and ends without one, or the next test's mediator would register with it."""
    if "hapi_url" not in request.fixturenames:
        yield
        return
    url = request.getfixturevalue("hapi_url")
    forget_stored_config(url)
    yield
    forget_stored_config(url)


@pytest.fixture
def offline_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings whose HAPI address refuses connections: for tests that never reach the FHIR store."""
    return app_settings(
        tmp_path_factory.mktemp("app"),
        hapi_base_url=f"http://127.0.0.1:{free_port()}/fhir",
        hapi_timeout_s=2.0,
        hapi_connect_timeout_s=1.0,
    )


def behind(core: CoreEmulator, base: Settings, **changes: Any) -> Settings:
    """``base`` registered with ``core``: fast heartbeats and backoff for tests."""
    values: dict[str, Any] = {
        "openhim_api_url": core.url,
        "openhim_password": ROOT_PASSWORD,
        "openhim_heartbeat_s": 0.05,
        "openhim_retry_max_s": 0.2,
        "openhim_timeout_s": 2.0,
        **changes,
    }
    return dataclasses.replace(base, **values)


Start = Callable[[Settings], Awaitable[tuple[TestClient, OpenHIMLink]]]


@pytest.fixture
def start_mediator(aiohttp_client: Callable[..., Any]) -> Start:
    async def start(settings: Settings) -> tuple[TestClient, OpenHIMLink]:
        app: web.Application = create_app(settings)
        client = await aiohttp_client(app)
        return client, app[OPENHIM]

    return start


async def poll_until(check: Callable[[], Awaitable[bool]], within_s: float = WAIT_S) -> None:
    """Ask ``check()`` again every 50 ms until it holds (for state outside this process: HAPI, a real
    core); TimeoutError after ``within_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"not within {within_s} s")
        await asyncio.sleep(0.05)  # polling a condition, not synchronising on time


def mediator_url(client: TestClient) -> str:
    return str(client.make_url("")).rstrip("/")


async def console_edit(core: CoreEmulator, link: OpenHIMLink, **changes: Any) -> dict[str, Any]:
    """Save the mediator's config in the (emulated) console with ``changes``, wait until the mediator has
    applied it without error, and return the config saved."""
    applied = link.configs_applied
    config = {**core.mediators[URN]["config"], **changes}
    assert await core.console_set_config(URN, config) == (200, "")
    await link.wait_for(lambda: link.configs_applied == applied + 1 or link.config_errors, WAIT_S)
    assert not link.config_errors, link.config_errors
    return config
