"""Fixtures for the admin tests: a user file per test, logged-in admin clients, a potential-match pair."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from cryptography.fernet import Fernet

from mediator.admin.score_index import SCORE_INDEX
from mediator.admin.users import UserStore
from mediator.app import create_app
from mediator.context import STORE
from mediator.review import POTENTIAL_MATCH, review_task_id
from mediator.settings import AdminSettings, Settings
from tests.conftest import patient, unique_surname

PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin_settings(tmp_path) -> AdminSettings:
    settings = AdminSettings(users_file=tmp_path / "admin-users.json", secret_key=Fernet.generate_key())
    store = UserStore(settings.users_file)
    store.set_password("alice", PASSWORD)
    store.set_password("bob", PASSWORD)
    return settings


@pytest.fixture
def settings(settings: Settings, admin_settings: AdminSettings) -> Settings:
    """The apps of the admin tests: their users (alice, bob) and one session key, shared by every app a
    test starts (as by replicas)."""
    return dataclasses.replace(settings, admin=admin_settings)


@dataclass
class AdminClient:
    client: TestClient
    csrf: str = ""

    async def login(self, user: str = "alice", password: str = PASSWORD) -> AdminClient:
        resp = await self.client.post("/admin/api/login", json={"username": user, "password": password})
        assert resp.status == 200, await resp.text()
        self.csrf = (await resp.json())["csrf"]
        return self

    async def get(self, path: str, **params: str) -> Any:
        resp = await self.client.get(path, params=params)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def post(self, path: str, payload: dict[str, Any], status: int = 200) -> Any:
        resp = await self.client.post(path, json=payload, headers={"X-CSRF-Token": self.csrf})
        assert resp.status == status, await resp.text()
        return await resp.json(content_type=None)


@pytest.fixture
async def app_client(aiohttp_client: Callable[..., Any], settings: Settings, admin_settings) -> TestClient:
    """The app, once its review search parameters are in HAPI (it installs them in the background at
    start-up; until then a decision that must find a person's review Tasks is 503)."""
    client = await aiohttp_client(create_app(settings))
    await client.server.app[SCORE_INDEX].install(client.server.app[STORE].hapi)
    return client


@pytest.fixture
async def admin(app_client) -> AdminClient:
    return await AdminClient(app_client).login()


@pytest.fixture
async def second_admin(aiohttp_client, settings, admin_settings) -> AdminClient:
    return await AdminClient(await aiohttp_client(create_app(settings))).login("bob")


@dataclass(frozen=True)
class Pair:
    family: str
    given: str
    system_a: str
    system_b: str
    source_a: str
    source_b: str
    golden_a: str
    golden_b: str
    task: str


async def make_pair(client: TestClient, facility: str, family: str | None = None) -> Pair:
    """Two submissions that score between the thresholds: a potential-match Task for the second."""
    family = family or unique_surname()
    other = facility.replace("facility-", "clinic-")
    given = unique_surname()  # shared birth dates must not pair these records with other tests' people
    a = await client.post("/fhir/Patient", json=patient(facility, "P1", family=family, given=given))
    assert a.status == 201, await a.text()
    b = await client.post(
        "/fhir/Patient",
        json=patient(other, "P2", family=family, given=given, birth_date="1987-05-12", phone=None),
    )
    assert b.status == 201, await b.text()
    assert b.headers["X-Match-Outcome"] == "potential"
    ga, gb = a.headers["X-CRUID"], b.headers["X-CRUID"]
    assert ga != gb
    sb = (await b.json())["id"]
    return Pair(
        family,
        given,
        facility,
        other,
        (await a.json())["id"],
        sb,
        ga,
        gb,
        review_task_id(POTENTIAL_MATCH, sb, ga),
    )


@pytest.fixture
async def pair(app_client, facility) -> Pair:
    return await make_pair(app_client, facility)
