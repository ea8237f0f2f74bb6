"""``POST /fhir`` with batch and transaction Bundles of Patients."""

from __future__ import annotations

from mediator import audit, records
from tests.conftest import patient, unique_surname


def _entry(resource, method="POST", url="Patient"):
    return {"resource": resource, "request": {"method": method, "url": url}}


async def test_batch_answers_each_entry_in_order(client, store, facility):
    family = unique_surname()
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            _entry(patient(facility, "B1", family=family)),
            _entry({"resourceType": "Patient", "name": [{"family": family}]}),  # no identifier
            _entry(patient(facility, "B2", family=family)),
        ],
    }
    resp = await client.post("/fhir", json=bundle)
    assert resp.status == 200
    out = await resp.json(content_type=None)
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert [s.split()[0] for s in statuses] == ["201", "422", "201"]
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    cruids = {
        i["value"]
        for e in (out["entry"][0], out["entry"][2])
        for i in e["resource"]["identifier"]
        if i["system"] != facility
    }
    assert len(cruids) == 1, "the two entries are the same person"
    assert len(await store.sources_with(facility)) == 2


async def test_transaction_is_all_or_nothing(client, store, facility):
    family = unique_surname()
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry(patient(facility, "T1", family=family)),
            _entry({**patient(facility, "T2", family=family), "birthDate": "not-a-date"}),
        ],
    }
    resp = await client.post("/fhir", json=bundle)
    assert resp.status == 400
    body = await resp.json(content_type=None)
    assert "Bundle.entry[1]" in str(body)
    assert await store.sources_with(facility) == []
    bundle["entry"][1] = {"request": "PUT", "resource": patient(facility, "T2", family=family)}
    not_an_object = await client.post("/fhir", json=bundle)  # a 500 before
    assert not_an_object.status == 400 and "Bundle.entry[1].request" in await not_an_object.text()
    assert await store.sources_with(facility) == []


async def test_transaction_links_entries_to_each_other(client, store, facility):
    family = unique_surname()
    other = facility.replace("facility-", "chw-")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry(patient(facility, "T1", family=family)),
            _entry(patient(other, "T9", family=family), method="PUT", url=f"Patient?identifier={other}|T9"),
        ],
    }
    resp = await client.post("/fhir", json=bundle)
    assert resp.status == 200, await resp.text()
    out = await resp.json(content_type=None)
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    ids = [e["resource"]["id"] for e in out["entry"]]
    goldens = [(await store.assert_consistent(i))["id"] for i in ids]
    assert goldens[0] == goldens[1]
    # one AuditEvent for the transaction, one group of entities per submission, each with its decision
    events = await store.search("AuditEvent", {"entity": f"Patient/{ids[1]}"})
    assert len(events) == 1
    groups = audit.groups(events[0])
    assert [records.ref_id(g[0]["what"]["reference"]) for g in groups] == ids
    assert [audit.details_of(g[0])["decision"] for g in groups] == ["no_match", "match"]
    assert all(records.ref_id(g[1]["what"]["reference"]) == goldens[0] for g in groups)


async def test_bundle_of_wrong_type_is_refused(client):
    resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": "collection"})
    assert resp.status == 400
    resp = await client.post(
        "/fhir",
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [_entry({"resourceType": "Observation"}, url="Observation")],
        },
    )
    out = await resp.json(content_type=None)
    assert out["entry"][0]["response"]["status"].startswith("400")
