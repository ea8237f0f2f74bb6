"""IHE PIXm ``Patient/$ihe-pix`` cross-reference lookups."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlencode

from mediator.admin import queries
from mediator.fhir_client import HapiClient
from tests.conftest import patient, unique_surname


async def _person(client, facility: str, settings) -> tuple[str, str, str]:
    family = unique_surname()
    other = facility.replace("facility-", "lab-")
    nid = {"system": settings.shared_identifier_systems[0], "value": f"NID-{family}"}
    a = await client.post(
        "/fhir/Patient", json=patient(facility, "X1", family=family, extra_identifiers=[nid])
    )
    b = await client.post("/fhir/Patient", json=patient(other, "Y1", family=family))
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]
    return other, a.headers["X-CRUID"], nid["value"]


def _identifiers(params) -> set[tuple[str, str]]:
    return {
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in params["parameter"]
        if p["name"] == "targetIdentifier"
    }


async def test_pix_returns_every_identifier_of_the_person(client, facility, settings):
    other, cruid, nid = await _person(client, facility, settings)
    resp = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|X1"})
    assert resp.status == 200
    params = await resp.json(content_type=None)
    assert params["resourceType"] == "Parameters"
    assert _identifiers(params) == {
        (settings.cruid_system, cruid),
        (other, "Y1"),
        (settings.shared_identifier_systems[0], nid),
    }
    refs = {p["valueReference"]["reference"] for p in params["parameter"] if p["name"] == "targetId"}
    assert f"Patient/{cruid}" in refs and len(refs) == 3


async def test_pix_filters_by_target_system(client, facility, settings):
    other, cruid, _ = await _person(client, facility, settings)
    resp = await client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|X1", "targetSystem": other}
    )
    params = await resp.json(content_type=None)
    assert _identifiers(params) == {(other, "Y1")}
    by_cruid = await client.get(
        "/fhir/Patient/$ihe-pix",
        params={"sourceIdentifier": f"{settings.cruid_system}|{cruid}", "targetSystem": facility},
    )
    assert _identifiers(await by_cruid.json(content_type=None)) == {(facility, "X1")}


async def test_pix_unknown_identifier_is_404(client, facility):
    resp = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|NOBODY"})
    assert resp.status == 404
    assert (await resp.json(content_type=None))["resourceType"] == "OperationOutcome"


async def test_pix_unknown_target_domain_is_403(client, facility, settings):
    await _person(client, facility, settings)
    resp = await client.get(
        "/fhir/Patient/$ihe-pix",
        params={"sourceIdentifier": f"{facility}|X1", "targetSystem": "http://unknown.example.org/ids"},
    )
    assert resp.status == 403


async def test_pix_needs_a_source_identifier(client):
    assert (await client.get("/fhir/Patient/$ihe-pix")).status == 400
    assert (await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": "nosystem"})).status == 400


async def _lookups(store, query: str) -> list[dict]:
    """The PIXm lookup AuditEvents whose query is ``query``."""
    events = await store.search("AuditEvent", {"subtype": "urn:ihe:event-type-code|ITI-83", "_count": "200"})
    return [
        ev
        for ev in events
        if any(
            parse_qs(base64.b64decode(e.get("query", "")).decode()) == parse_qs(query) for e in ev["entity"]
        )
    ]


async def test_every_lookup_is_recorded_as_an_audit_event(client, store, facility, settings):
    """Who looked whom up: the query, the client and the person's golden record (IHE PIXm's Query audit);
    an unknown identifier is recorded too (outcome 4). The admin's history of the person lists it."""
    _, cruid, _ = await _person(client, facility, settings)
    query = urlencode({"sourceIdentifier": f"{facility}|X1"})
    resp = await client.get(f"/fhir/Patient/$ihe-pix?{query}", headers={"X-OpenHIM-ClientID": "lab-app"})
    assert resp.status == 200
    [event] = await _lookups(store, query)
    assert event["type"]["code"] == "rest" and event["action"] == "E" and event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == "lab-app"
    assert [e["what"]["reference"] for e in event["entity"] if "what" in e] == [f"Patient/{cruid}"]
    history = await queries.history(HapiClient(store.session, settings.hapi_base_url, 30, 3), cruid)
    assert [h["action"] for h in history if h["id"] == event["id"]] == ["identifier lookup (PIXm)"]

    unknown = urlencode({"sourceIdentifier": f"{facility}|NOBODY"})
    assert (await client.get(f"/fhir/Patient/$ihe-pix?{unknown}")).status == 404
    [refused] = await _lookups(store, unknown)
    assert refused["outcome"] == "4" and "not known" in refused["outcomeDesc"]
    assert not [e for e in refused["entity"] if "what" in e]
