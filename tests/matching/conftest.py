from __future__ import annotations

import pathlib
from typing import Any

import pytest

import matching

ROOT = pathlib.Path(__file__).resolve().parents[2]
NID = "http://example.org/national-id"


@pytest.fixture(scope="session")
def rules() -> matching.Rules:
    return matching.load_rules(ROOT / "rules" / "default.yaml")


def patient(
    pid: str,
    given: list[str] | str,
    family: str,
    birth: str | None = "1985-04-17",
    gender: str | None = "female",
    phone: str | None = "+255 754 123456",
    city: str | None = "Arusha",
    line: str | None = "Plot 12 Sokoine Road",
    ids: dict[str, str] | None = None,
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "name": [
            {"use": "official", "family": family, "given": [given] if isinstance(given, str) else given}
        ],
    }
    if gender:
        p["gender"] = gender
    if birth:
        p["birthDate"] = birth
    if phone:
        p["telecom"] = [{"system": "phone", "value": phone}]
    if city or line:
        p["address"] = [{"line": [line] if line else [], "city": city}]
    if ids:
        p["identifier"] = [{"system": s, "value": v} for s, v in ids.items()]
    return p
