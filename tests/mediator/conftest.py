"""Fixtures of the mediator tests."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from mediator.app import create_app
from mediator.settings import Settings
from tests.conftest import patient, unique_surname


@dataclass(frozen=True)
class Closed:
    """An app behind OpenHIM with a client map: "clinic" and "lab", each with an identifier system of its own,
    and one person they both submitted (``clinic_answer``, ``lab_answer``: the submissions' headers)."""

    client: Any
    settings: Settings
    clinic: str
    lab: str
    family: str
    clinic_answer: Any
    lab_answer: Any


@pytest.fixture
async def closed(aiohttp_client: Any, settings: Settings) -> Closed:
    clinic, lab = (f"urn:test:{uuid.uuid4().hex[:10]}" for _ in range(2))
    settings = dataclasses.replace(settings, client_systems={"clinic": (clinic,), "lab": (lab,)})
    client = await aiohttp_client(create_app(settings))
    family = unique_surname()
    a = await client.post(
        "/fhir/Patient", json=patient(clinic, "C1", family=family), headers={"X-OpenHIM-ClientID": "clinic"}
    )
    b = await client.post(
        "/fhir/Patient", json=patient(lab, "L1", family=family), headers={"X-OpenHIM-ClientID": "lab"}
    )
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]
    return Closed(client, settings, clinic, lab, family, a.headers, b.headers)
