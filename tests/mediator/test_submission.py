"""A Patient submission end to end, against the real HAPI server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from prometheus_client import generate_latest

from mediator import records
from mediator.app import create_app
from mediator.context import METRICS
from tests.conftest import metric_samples, patient, unique_surname

FHIR = {"Content-Type": "application/fhir+json"}


async def test_new_patient_gets_a_golden_record_and_only_identifiers_back(client, store, facility, settings):
    family = unique_surname()
    resp = await client.post("/fhir/Patient", json=patient(facility, "A1", family=family), headers=FHIR)
    assert resp.status == 201
    body = await resp.json(content_type=None)
    cruid = resp.headers["X-CRUID"]
    assert resp.headers["Location"].startswith(f"Patient/{body['id']}")
    assert resp.headers["LocationCRUID"] == f"Patient/{cruid}"
    # only the POS's own identifiers and the CRUID: no demographics
    assert set(body) <= {"resourceType", "id", "identifier", "link", "meta"}
    assert {(i["system"], i["value"]) for i in body["identifier"]} == {
        (facility, "A1"),
        (settings.cruid_system, cruid),
    }
    assert family not in str(body)

    golden = await store.assert_consistent(body["id"])
    assert records.cruid_of(golden, settings.cruid_system) == cruid
    assert "name" not in golden and "birthDate" not in golden
    source = await store.read("Patient", body["id"])
    assert source["name"][0]["family"] == family
    assert records.tags(source, records.RECORD_TYPE_SYSTEM) == [records.SOURCE]
    assert records.tags(source, records.BLOCK_SYSTEM), "blocking keys are stored as tags"

    events = await store.search("AuditEvent", {"entity": f"Patient/{body['id']}"})
    assert len(events) == 1
    details = {d["type"]: d["valueString"] for d in events[0]["entity"][0]["detail"]}
    assert details["decision"] == resp.headers["X-Match-Outcome"] and details["cruid"] == cruid


async def test_resubmission_updates_the_same_source_record(client, store, facility):
    family = unique_surname()
    first = await client.post("/fhir/Patient", json=patient(facility, "R1", family=family))
    assert first.status == 201
    new_phone = f"+2567{uuid.uuid4().int % 10**8:08d}"
    second = await client.post("/fhir/Patient", json=patient(facility, "R1", family=family, phone=new_phone))
    assert second.status == 200
    assert first.headers["X-CRUID"] == second.headers["X-CRUID"]
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    assert sources[0]["telecom"][0]["value"] == new_phone
    assert sources[0]["meta"]["versionId"] == "2"


async def test_corrected_demographics_replace_the_blocking_keys(client, store, facility):
    first = await client.post("/fhir/Patient", json=patient(facility, "K1", family=unique_surname()))
    source_id = (await first.json(content_type=None))["id"]
    before = set(records.tags(await store.read("Patient", source_id), records.BLOCK_SYSTEM))
    corrected = patient(facility, "K1", family=unique_surname(), given="Wanjiru", birth_date="1975-09-30")
    assert (await client.post("/fhir/Patient", json=corrected)).status == 200
    source = await store.read("Patient", source_id)
    after = set(records.tags(source, records.BLOCK_SYSTEM))
    assert after
    old_name_and_birth_keys = {k for k in before if k.startswith(("nm", "dob:", "gy:"))}
    assert old_name_and_birth_keys and not old_name_and_birth_keys & after
    assert records.tags(source, records.RECORD_TYPE_SYSTEM) == [records.SOURCE]


async def test_same_person_from_two_facilities_shares_one_cruid(client, store, facility):
    family = unique_surname()
    other = facility.replace("facility-", "clinic-")
    a = await client.post("/fhir/Patient", json=patient(facility, "S1", family=family))
    b = await client.post("/fhir/Patient", json=patient(other, "S2", family=family))
    assert (a.status, b.status) == (201, 201)
    assert b.headers["X-Match-Outcome"] == "match"
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]
    golden = await store.assert_consistent((await b.json(content_type=None))["id"])
    assert len(records.source_ids_of(golden)) == 2


async def test_a_different_person_gets_another_cruid(client, facility):
    family = unique_surname()
    a = await client.post("/fhir/Patient", json=patient(facility, "D1", family=family))
    b = await client.post(
        "/fhir/Patient",
        json=patient(facility, "D2", family=family, given="Joseph", gender="male", birth_date="1961-11-03"),
    )
    assert (a.status, b.status) == (201, 201)
    assert a.headers["X-CRUID"] != b.headers["X-CRUID"]


async def test_update_relinks_to_another_person_and_retires_the_empty_golden(client, store, facility):
    family = unique_surname()
    other_family = unique_surname()
    a = await client.post("/fhir/Patient", json=patient(facility, "U1", family=family))
    b = await client.post(
        "/fhir/Patient",
        json=patient(facility, "U2", family=other_family, given="Grace", birth_date="1990-01-20"),
    )
    old_golden = b.headers["X-CRUID"]
    b_id = (await b.json(content_type=None))["id"]
    assert a.headers["X-CRUID"] != old_golden
    # The facility corrects U2's demographics: it is the same person as U1.
    resp = await client.put(f"/fhir/Patient/{b_id}", json=patient(facility, "U2", family=family))
    assert resp.status == 200
    assert resp.headers["X-CRUID"] == a.headers["X-CRUID"]
    await store.assert_consistent(b_id)
    retired = await store.read("Patient", old_golden)
    assert retired is not None, "a golden record with no sources is kept"
    assert retired["active"] is False and records.source_ids_of(retired) == []


async def test_update_that_splits_a_person_creates_a_new_golden(client, store, facility):
    family = unique_surname()
    a = await client.post("/fhir/Patient", json=patient(facility, "P1", family=family))
    b = await client.post("/fhir/Patient", json=patient(facility, "P2", family=family))
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]
    b_id = (await b.json(content_type=None))["id"]
    changed = patient(
        facility, "P2", family=unique_surname(), given="Peter", gender="male", birth_date="1950-03-03"
    )
    resp = await client.put(f"/fhir/Patient/{b_id}", json=changed)
    assert resp.status == 200
    assert resp.headers["X-CRUID"] != a.headers["X-CRUID"]
    kept = await store.assert_consistent((await a.json(content_type=None))["id"])
    assert records.source_ids_of(kept) == [(await a.json(content_type=None))["id"]]
    await store.assert_consistent(b_id)


async def test_conditional_update_by_identifier(client, store, facility):
    family = unique_surname()
    created = await client.put(
        "/fhir/Patient", params={"identifier": f"{facility}|C1"}, json=patient(facility, "C1", family=family)
    )
    assert created.status == 201
    again = await client.put(
        "/fhir/Patient", params={"identifier": f"{facility}|C1"}, json=patient(facility, "C1", family=family)
    )
    assert again.status == 200
    assert created.headers["X-CRUID"] == again.headers["X-CRUID"]
    assert len(await store.sources_with(facility)) == 1
    mismatch = await client.put(
        "/fhir/Patient",
        params={"identifier": f"{facility}|OTHER"},
        json=patient(facility, "C1", family=family),
    )
    assert mismatch.status == 400
    two = await client.put(  # which one would it be? (the first was taken before)
        "/fhir/Patient",
        params=[("identifier", f"{facility}|C1"), ("identifier", f"{facility}|C2")],
        json=patient(facility, "C1", family=family),
    )
    assert two.status == 400 and "exactly one" in await two.text()


async def test_put_to_a_golden_record_is_refused(client, facility):
    resp = await client.post("/fhir/Patient", json=patient(facility, "G1", family=unique_surname()))
    cruid = resp.headers["X-CRUID"]
    refused = await client.put(f"/fhir/Patient/{cruid}", json=patient(facility, "G1", family="X"))
    assert refused.status == 403
    assert (await refused.json(content_type=None))["resourceType"] == "OperationOutcome"


async def test_put_to_an_unknown_record_is_not_found(client, facility):
    from mediator.records import source_record_id

    unknown = source_record_id(facility, "NOPE")
    resp = await client.put(
        f"/fhir/Patient/{unknown}", json=patient(facility, "NOPE", family=unique_surname())
    )
    assert resp.status == 404


async def test_an_oversized_block_does_not_hide_the_true_match(aiohttp_client, settings, facility, caplog):
    """A birth date shared by more records than the candidate limit: the other keys still find the person;
    the warning about the skipped block names the kind of key, not the birth date."""
    import logging
    from dataclasses import replace

    from mediator.app import create_app
    from mediator.logs import JsonFormatter

    small = await aiohttp_client(create_app(replace(settings, max_candidates=5)))
    givens = ["Achieng", "Nafula", "Wambui", "Chebet", "Atieno", "Njeri", "Akinyi"]
    people = [
        patient(facility, f"O{n}", family=unique_surname(), given=g, birth_date="1969-02-27")
        for n, g in enumerate(givens)
    ]
    for p in people:
        assert (await small.post("/fhir/Patient", json=p)).status == 201
    first = await small.post("/fhir/Patient", json=people[0])
    again = {**people[0], "identifier": [{"system": facility.replace("facility-", "hosp-"), "value": "Z9"}]}
    with caplog.at_level(logging.WARNING):
        resp = await small.post("/fhir/Patient", json=again)
    assert resp.status == 201
    assert resp.headers["X-Match-Outcome"] == "match"
    assert resp.headers["X-CRUID"] == first.headers["X-CRUID"]
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "blocks over the candidate limit skipped" in logged and '"dob"' in logged
    assert "19690227" not in logged and "1969" not in logged


async def test_the_capability_statement_is_dated_when_the_instance_started(aiohttp_client, settings):
    """Its date was a fixed string written into the code (FHIR: the date the statement last changed)."""
    before = datetime.now(UTC).replace(microsecond=0)
    client = await aiohttp_client(create_app(settings))
    resp = await client.get("/fhir/metadata")
    assert resp.status == 200
    dated = datetime.fromisoformat((await resp.json(content_type=None))["date"])
    assert before <= dated <= datetime.now(UTC)


def _calls(app, call: str) -> float:
    samples = metric_samples(generate_latest(app[METRICS].registry).decode())
    return samples.get(("cr_fhir_store_call_duration_seconds_count", (("call", call),)), 0.0)


async def test_a_new_identifier_is_not_read_before_it_is_written(client, facility):
    """A new identifier costs the candidate listing and the transaction: its own record is not read (the read
    was a 404 every time); the create's If-Match W/"0" still refuses a record created meanwhile."""
    app = client.server.app
    reads = _calls(app, "read Patient")
    resp = await client.post("/fhir/Patient", json=patient(facility, "NEW1", family=unique_surname()))
    assert resp.status == 201
    assert _calls(app, "read Patient") == reads


async def test_a_record_whose_demographics_all_changed_is_still_updated(client, store, facility):
    """Its own record is not among its candidates any more (no blocking key in common): taken as new at
    first, refused by HAPI (If-Match W/"0"), then decided again from a read — the same record, updated."""
    first = await client.post("/fhir/Patient", json=patient(facility, "MOVED", family=unique_surname()))
    changed = patient(
        facility, "MOVED", family=unique_surname(), given="Zebedee", birth_date="1931-02-03", gender="male"
    )
    second = await client.post("/fhir/Patient", json=changed)
    assert (first.status, second.status) == (201, 200)
    assert second.headers["Location"].startswith(
        first.headers["Location"].split("/_history")[0] + "/_history/2"
    )
    assert second.headers["X-CRUID"] == first.headers["X-CRUID"]  # alone on its golden record: it stays
    await store.assert_consistent(first.headers["Location"].split("/")[1])
    by_id = changed | {"id": first.headers["Location"].split("/")[1]}
    again = await client.put(f"/fhir/Patient/{by_id['id']}", json=by_id | {"birthDate": "1931-02-04"})
    assert again.status == 200
