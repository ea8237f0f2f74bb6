"""Shared fixtures: the real HAPI FHIR server (started once per test session) and the mediator app.

HAPI runs on its own port and data folder for tests (``HAPI_PORT=8091``, ``var/test-hapi``), wiped at the
start of the session, so the registry's own run command can stay up meanwhile. Set ``CR_TEST_HAPI_URL`` to
use a server that is already running instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bench import hapi_instance
from mediator.app import create_app
from mediator.settings import AdminSettings, Settings

REPO = Path(__file__).resolve().parent.parent
TEST_HAPI_PORT = os.environ.get("CR_TEST_HAPI_PORT", "8091")


@pytest.fixture(scope="session")
def hapi_url() -> Iterator[str]:
    external = os.environ.get("CR_TEST_HAPI_URL")
    if external:
        yield external.rstrip("/")
        return
    env = hapi_instance.hapi_env("test-hapi", TEST_HAPI_PORT)
    hapi_instance.start(env, fresh=True)
    try:
        yield f"http://127.0.0.1:{TEST_HAPI_PORT}/fhir"
    finally:
        hapi_instance.stop(env)


@pytest.fixture(autouse=True)
def _no_applied_rules_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Rules a test's re-match applied are stored in the shared test HAPI: forget them after the test, or
    every later test's app would start with them (mediator/applied_rules.py)."""
    yield
    if "hapi_url" not in request.fixturenames:
        return
    from urllib.error import HTTPError, URLError
    from urllib.request import Request, urlopen

    url = f"{request.getfixturevalue('hapi_url')}/Basic/cr-rules-applied"
    try:
        with urlopen(Request(url, method="DELETE"), timeout=30):
            pass
    except (HTTPError, URLError):
        pass


def app_settings(folder: Path, **changes: Any) -> Settings:
    """Settings for an app a test starts: its files (admin jobs, admin users and session key) in ``folder``,
    never under var/ (an app never resumes var/jobs)."""
    values: dict[str, Any] = {
        "jobs_dir": folder / "jobs",
        "admin": AdminSettings(
            users_file=folder / "admin-users.json", secret_file=folder / "admin-secret.key"
        ),
        **changes,
    }
    return Settings(**values)


@pytest.fixture
def settings(hapi_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return app_settings(tmp_path_factory.mktemp("app"), hapi_base_url=hapi_url, hapi_timeout_s=30.0)


@pytest.fixture
async def client(aiohttp_client: Callable[..., Any], settings: Settings) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(settings))


@pytest.fixture
def facility() -> str:
    """A fresh identifier system per test, so tests never see each other's records as the same source."""
    return f"http://facility-{uuid.uuid4().hex[:8]}.example.org/mrn"


def unique_surname() -> str:
    """A surname no other test uses, and not even a similar one.

    Many tests send the default given name and birth date, so their records share blocking keys in the
    test HAPI; a surname only 'similar' to another test's (Jaro-Winkler >= 0.84) is enough to make a new
    person a potential match. Eight random syllables make that about 1 pair in 170,000 (4 syllables:
    1 in 6,000, and one such pair failed a CI run)."""
    letters = "bcdfghjklmnprstvz"
    vowels = "aeiou"
    raw = uuid.uuid4().int
    name = ""
    for _ in range(8):
        name += letters[raw % len(letters)] + vowels[(raw // 17) % len(vowels)]
        raw //= 97
    return name.capitalize()


def metric_samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """A Prometheus text exposition as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def unique_phone() -> str:
    return f"+2567{uuid.uuid4().int % 10**8:08d}"


def patient(
    system: str,
    value: str,
    *,
    family: str,
    given: str = "Amina",
    birth_date: str = "1987-04-12",
    gender: str = "female",
    phone: str | None = "",
    extra_identifiers: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": value}, *(extra_identifiers or [])],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender,
        "birthDate": birth_date,
    }
    if phone == "":  # default: a phone number of this family only, so tests stay apart
        phone = "+2567" + str(int(uuid.uuid5(uuid.NAMESPACE_DNS, family).hex, 16))[:8]
    if phone:
        resource["telecom"] = [{"system": "phone", "value": phone}]
    return resource


@pytest.fixture
async def store(hapi_url: str) -> AsyncIterator[Any]:
    import aiohttp

    from tests.hapi_helpers import Store

    async with aiohttp.ClientSession() as session:
        yield Store(session, hapi_url)
