"""Bad input gets a 4xx with an OperationOutcome naming the problem, and nothing is written."""

from __future__ import annotations

import io
import json

import pytest

from tests.conftest import patient, unique_surname


async def _outcome(resp) -> str:
    body = await resp.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def _extensions(levels: int) -> str:
    """An extension holding an extension, ``levels`` deep (two JSON levels each)."""
    text = '{"url": "http://example.org/x", "valueString": "v"}'
    for _ in range(levels):
        text = '{"url": "http://example.org/x", "extension": [' + text + "]}"
    return text


def _cases(facility: str) -> list[tuple[str, bytes, dict[str, str], int, str]]:
    good = patient(facility, "BAD1", family=unique_surname())
    no_ident = {k: v for k, v in good.items() if k != "identifier"}
    no_system = {**good, "identifier": [{"value": "BAD1"}]}
    wrong_type = {**good, "resourceType": "Observation"}
    bad_date = {**good, "birthDate": "1987-13-45"}
    bad_gender = {**good, "gender": "M"}
    control = {**good, "name": [{**good["name"][0], "family": good["name"][0]["family"] + "\u0000"}]}
    nested = json.dumps({**good, "extension": ["NESTED"]}).replace('"NESTED"', _extensions(40))
    deep_json = json.dumps({**good, "extension": ["DEEP"]}).replace('"DEEP"', "[" * 100_000 + "]" * 100_000)
    fhir = {"Content-Type": "application/fhir+json"}
    return [
        ("not json", b"{not json", fhir, 400, "not valid JSON"),
        ("array", b"[]", fhir, 400, "JSON object"),
        ("wrong resourceType", json.dumps(wrong_type).encode(), fhir, 400, "Expected a Patient"),
        ("no identifier", json.dumps(no_ident).encode(), fhir, 422, "no identifier"),
        ("identifier without system", json.dumps(no_system).encode(), fhir, 400, "system"),
        ("bad birthDate", json.dumps(bad_date).encode(), fhir, 400, "birthDate"),
        ("bad gender", json.dumps(bad_gender).encode(), fhir, 400, "gender"),
        # FHIR strings hold no characters below U+0020 but tab, CR and LF; PostgreSQL cannot store U+0000
        ("control character", json.dumps(control).encode(), fhir, 400, "Patient.name[0].family: U+0000"),
        # deeper than any Patient: refused before the models or the encoder recurse into it (500 before)
        ("nested extensions", nested.encode(), fhir, 400, "nested more than 64 levels deep"),
        ("deeply nested JSON", deep_json.encode(), fhir, 400, "nests more than 64 levels deep"),
        (
            "unknown FHIR version",
            json.dumps(good).encode(),
            {"Content-Type": "application/fhir+json; fhirVersion=3.0"},
            400,
            "FHIR version 3.0",
        ),
        ("xml", b"<Patient/>", {"Content-Type": "application/fhir+xml"}, 400, "application/fhir+json"),
        ("empty", b"", fhir, 400, "no body"),
    ]


@pytest.mark.parametrize("index", range(13))
async def test_bad_patient_is_refused_and_nothing_written(client, store, facility, index):
    name, body, headers, status, words = _cases(facility)[index]
    resp = await client.post("/fhir/Patient", data=body, headers=headers)
    assert resp.status == status, name
    assert words in await _outcome(resp), name
    assert await store.sources_with(facility) == []


async def test_oversized_body_is_refused(client, store, facility, settings):
    big = patient(facility, "BIG", family=unique_surname())
    big["name"][0]["text"] = "x" * (settings.max_body_bytes + 10)
    resp = await client.post(
        "/fhir/Patient",
        data=io.BytesIO(json.dumps(big).encode()),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert resp.status == 413
    assert "larger than" in await _outcome(resp)
    assert await store.sources_with(facility) == []


async def test_only_shared_identifiers_is_unprocessable(client, store, settings):
    shared = settings.shared_identifier_systems[0]
    value = f"NID-{unique_surname()}"
    resp = await client.post("/fhir/Patient", json=patient(shared, value, family=unique_surname()))
    assert resp.status == 422
    assert "submitting system" in await _outcome(resp)
    assert await store.search("Patient", {"identifier": f"{shared}|{value}"}) == []


async def test_submitting_a_cruid_is_forbidden(client, facility, settings):
    p = patient(
        facility,
        "X1",
        family=unique_surname(),
        extra_identifiers=[{"system": settings.cruid_system, "value": "cr-1"}],
    )
    resp = await client.post("/fhir/Patient", json=p)
    assert resp.status == 403


async def test_unknown_route_and_method_answer_operation_outcome(client):
    assert (await client.get("/fhir/Nothing")).status == 404
    resp = await client.patch("/fhir/Patient/abc", json={})
    assert resp.status == 405
    await _outcome(resp)
