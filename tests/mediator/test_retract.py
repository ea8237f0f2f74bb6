"""``DELETE /fhir/Patient/{id}``: a point-of-service system retracts a source record it entered in error."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from aiohttp import web

from mediator import records
from mediator.app import create_app
from mediator.context import METRICS, STORE
from mediator.review import POTENTIAL_MATCH
from tests.conftest import metric_samples, patient, unique_phone, unique_surname
from tests.hapi_helpers import MissingSearchParameter, forward_to_hapi, put_now, serve_proxy
from tests.mediator.test_pos_merge import merged, source_id, two_people

CLINIC = {"X-OpenHIM-ClientID": "clinic"}
LAB = {"X-OpenHIM-ClientID": "lab"}


async def _submit(client: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    resp = await client.post("/fhir/Patient", json=body, headers=headers)
    assert resp.status in (200, 201), await resp.text()
    return resp


async def _source_id(resp: Any) -> str:
    return str((await resp.json(content_type=None))["id"])


async def _history(store: Any, resource_type: str, resource_id: str) -> list[dict[str, Any]]:
    async with store.session.get(f"{store.base_url}/{resource_type}/{resource_id}/_history") as resp:
        assert resp.status == 200
        return list((await resp.json(content_type=None)).get("entry", []))


async def _deletion_events(store: Any, source_id: str) -> list[dict[str, Any]]:
    events = await store.search("AuditEvent", {"entity": f"Patient/{source_id}"})
    return [e for e in events if e.get("action") == "D"]


async def _person_of_two(client: Any, facility: str) -> tuple[str, str, str, str]:
    """One person with two source records (two facilities); (family, source a, source b, golden id)."""
    family = unique_surname()
    other = facility.replace("facility-", "lab-")
    a = await _submit(client, patient(facility, "X1", family=family))
    b = await _submit(client, patient(other, "Y1", family=family))
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]
    return family, await _source_id(a), await _source_id(b), a.headers["X-CRUID"]


async def test_delete_removes_the_source_and_its_link_in_one_audited_transaction(client, store, facility):
    family, a_id, b_id, golden_id = await _person_of_two(client, facility)

    resp = await client.delete(f"/fhir/Patient/{a_id}")

    assert resp.status == 200
    outcome = await resp.json(content_type=None)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "information"
    assert f"Patient/{a_id}" in outcome["issue"][0]["diagnostics"]
    assert await store.read("Patient", a_id) is None
    history = await _history(store, "Patient", a_id)
    assert history[0]["request"]["method"] == "DELETE" and len(history) == 2, "soft delete: history kept"
    golden = await store.read("Patient", golden_id)
    assert golden is not None
    assert records.source_ids_of(golden) == [b_id]
    assert golden["active"] is True, "another source is left"
    await store.assert_consistent(b_id)

    (event,) = await _deletion_events(store, a_id)
    assert event["subtype"][0]["code"] == "delete"
    refs = [e["what"]["reference"] for e in event["entity"]]
    assert refs[:2] == [f"Patient/{a_id}", f"Patient/{golden_id}"]
    details = {d["type"]: d["valueString"] for d in event["entity"][0]["detail"]}
    assert details["action"] == "delete" and details["cruid"] == golden_id
    assert family not in json.dumps(event) and "1987-04-12" not in json.dumps(event), "no demographics"


async def test_deleting_the_last_source_makes_the_golden_record_inactive(client, store, facility, settings):
    resp = await _submit(client, patient(facility, "ONLY", family=unique_surname()))
    source_id, golden_id = await _source_id(resp), resp.headers["X-CRUID"]
    lookup = f"/fhir/Patient/$ihe-pix?sourceIdentifier={settings.cruid_system}|{golden_id}"
    assert (await client.get(lookup)).status == 200

    assert (await client.delete(f"/fhir/Patient/{source_id}")).status == 200
    # the CRUID names nobody any more: a lookup is 404, not an answer naming the CRUID alone
    gone = await client.get(lookup)
    assert gone.status == 404
    assert "no records" in (await gone.json(content_type=None))["issue"][0]["diagnostics"]

    golden = await store.read("Patient", golden_id)
    assert golden is not None, "a golden record is never deleted"
    assert golden["active"] is False and records.source_ids_of(golden) == []
    (event,) = await _deletion_events(store, source_id)
    assert {"type": "active", "valueString": "false"} in event["entity"][1]["detail"]


async def test_a_retried_delete_answers_the_same_and_writes_nothing(client, store, facility):
    _, a_id, _, golden_id = await _person_of_two(client, facility)
    first = await client.delete(f"/fhir/Patient/{a_id}")
    golden_after = await store.read("Patient", golden_id)

    again = await client.delete(f"/fhir/Patient/{a_id}")

    assert (first.status, again.status) == (200, 200)
    assert await again.json(content_type=None) == await first.json(content_type=None)
    assert await store.read("Patient", golden_id) == golden_after, "the golden record was not written again"
    assert len(await _deletion_events(store, a_id)) == 1, "one AuditEvent"
    assert [e["request"]["method"] for e in await _history(store, "Patient", a_id)].count("DELETE") == 1


async def test_refusals_write_nothing(client, store, facility):
    _, a_id, _, golden_id = await _person_of_two(client, facility)
    golden = await store.read("Patient", golden_id)

    bad = await client.delete("/fhir/Patient/not_a$fhir~id")
    assert bad.status == 400
    assert (await bad.json(content_type=None))["resourceType"] == "OperationOutcome"

    unknown = await client.delete(f"/fhir/Patient/src-{'0' * 40}")
    assert unknown.status == 404
    assert (await unknown.json(content_type=None))["issue"][0]["code"] == "not-found"

    of_golden = await client.delete(f"/fhir/Patient/{golden_id}")
    assert of_golden.status == 403
    assert "Golden records" in (await of_golden.json(content_type=None))["issue"][0]["diagnostics"]

    plain_id = f"plain-{unique_surname().lower()}"
    assert put_now(store.base_url, {"resourceType": "Patient", "id": plain_id}) in (200, 201)
    not_source = await client.delete(f"/fhir/Patient/{plain_id}")
    assert not_source.status == 400
    assert "not a source record" in (await not_source.json(content_type=None))["issue"][0]["diagnostics"]
    assert await store.read("Patient", plain_id) is not None

    assert await store.read("Patient", golden_id) == golden
    assert await store.read("Patient", a_id) is not None


async def _refusal(client: Any, record_id: str, headers: Any) -> tuple[int, str, str]:
    resp = await client.delete(f"/fhir/Patient/{record_id}", headers=headers)
    issue = (await resp.json(content_type=None))["issue"][0]
    return resp.status, issue["code"], issue["diagnostics"].replace(record_id, "<id>")


async def test_with_a_client_map_only_the_owner_deletes(closed, store):
    """Another client's record is answered as a record never stored (404, the same outcome): a record id is
    a hash of its identifier, so a 403 told any client which of another's identifiers the registry holds."""
    client = closed.client
    clinic_id = records.source_record_id(closed.clinic, "C1")
    lab_id = records.source_record_id(closed.lab, "L1")
    never = records.source_record_id(closed.clinic, "NEVER-SENT")
    before = await store.read("Patient", clinic_id)

    for headers in (LAB, {"X-OpenHIM-ClientID": "stranger"}, None):
        refused = await _refusal(client, clinic_id, headers)
        assert refused == await _refusal(client, never, headers), headers
        assert refused[:2] == (404, "not-found"), headers
    assert await store.read("Patient", clinic_id) == before, "nothing written"
    assert await _deletion_events(store, clinic_id) == []

    assert (await client.delete(f"/fhir/Patient/{clinic_id}", headers=CLINIC)).status == 200
    retried_by_lab = await client.delete(f"/fhir/Patient/{clinic_id}", headers=LAB)
    assert retried_by_lab.status == 404, "a deleted record is still not another client's to delete"
    (event,) = await _deletion_events(store, clinic_id)
    assert event["agent"][0]["who"]["identifier"]["value"] == "clinic"
    await store.assert_consistent(lab_id)


async def test_after_a_delete_the_identifier_is_unknown_then_new(client, store, facility):
    family, a_id, b_id, golden_id = await _person_of_two(client, facility)
    assert (await client.delete(f"/fhir/Patient/{a_id}")).status == 200

    pix = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|X1"})
    assert pix.status == 404

    again = await client.post("/fhir/Patient", json=patient(facility, "X1", family=family))
    assert again.status == 201, "treated as new"
    assert again.headers["X-Match-Outcome"] == "match", "matched afresh"
    assert again.headers["X-CRUID"] == golden_id
    golden = await store.assert_consistent(a_id)
    assert sorted(records.source_ids_of(golden)) == sorted([a_id, b_id])
    pix = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|X1"})
    assert pix.status == 200


async def test_another_replica_relies_on_hapi_not_on_its_caches(aiohttp_client, settings, store, facility):
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    family = unique_surname()
    other = facility.replace("facility-", "lab-")
    a = await _submit(two, patient(facility, "R1", family=family))
    await _submit(two, patient(other, "R2", family=family))  # two holds the golden record and the sources
    a_id, golden_id = await _source_id(a), a.headers["X-CRUID"]
    assert len(two.server.app[STORE].registry.goldens) > 0

    assert (await one.delete(f"/fhir/Patient/{a_id}")).status == 200

    assert (
        await two.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|R1"})
    ).status == 404
    retried = await two.delete(f"/fhir/Patient/{a_id}")
    assert retried.status == 200, "the retry reaching the other replica answers the same"
    again = await two.post("/fhir/Patient", json=patient(facility, "R1", family=family))
    assert again.status == 201 and again.headers["X-CRUID"] == golden_id
    await store.assert_consistent(a_id)
    assert len(await _deletion_events(store, a_id)) == 1


async def test_a_golden_record_changed_meanwhile_is_read_again_not_overwritten(
    aiohttp_client, settings, store, facility
):
    """The deleting replica holds the golden record in an old version (KnownRecords): its transaction is
    refused by HAPI (If-Match) and decided again from fresh reads, so the link another replica added
    meanwhile stays."""
    one = await aiohttp_client(create_app(settings))
    two = await aiohttp_client(create_app(settings))
    family = unique_surname()
    a = await _submit(one, patient(facility, "K1", family=family))  # one holds the golden record now
    c = await _submit(two, patient(facility.replace("facility-", "hc-"), "K3", family=family))
    assert c.headers["X-CRUID"] == a.headers["X-CRUID"]
    a_id, c_id = await _source_id(a), await _source_id(c)

    assert (await one.delete(f"/fhir/Patient/{a_id}")).status == 200

    golden = await store.assert_consistent(c_id)
    assert records.source_ids_of(golden) == [c_id], "the link added meanwhile was not lost"
    retries = metric_samples(one.server.app[METRICS].exposition().text or "")
    assert retries[("cr_conflict_retries_total", ())] >= 1


async def test_open_review_tasks_about_the_record_are_closed_as_moot(client, store, facility):
    family = unique_surname()
    other = facility.replace("facility-", "hc-")
    a = await _submit(client, patient(facility, "PM1", family=family, phone=unique_phone()))
    b = await _submit(client, patient(other, "PM2", family=family, phone=None, birth_date="1988-04-12"))
    assert b.headers["X-Match-Outcome"] == "potential"
    b_id = await _source_id(b)
    (task,) = [
        t
        for t in await store.search("Task", {"focus": f"Patient/{b_id}"})
        if t["code"]["coding"][0]["code"] == POTENTIAL_MATCH
    ]
    assert task["status"] == "requested"

    assert (await client.delete(f"/fhir/Patient/{b_id}")).status == 200

    closed = await store.read("Task", task["id"])
    assert closed is not None
    assert closed["status"] == "cancelled"
    assert closed["businessStatus"]["text"] == "resolved-by-retraction"
    (event,) = await _deletion_events(store, b_id)
    assert f"Task/{task['id']}" in [e["what"]["reference"] for e in event["entity"]]
    assert await store.assert_consistent(await _source_id(a))


async def test_review_tasks_about_a_golden_record_left_empty_are_closed_as_moot(client, store, facility):
    """Retracting the only source record of the person a potential match points to leaves nothing to
    decide: that Task (its ``candidate`` the emptied golden record) is closed with the retraction."""
    family = unique_surname()
    other = facility.replace("facility-", "hc-")
    a = await _submit(client, patient(facility, "PE1", family=family, phone=unique_phone()))
    b = await _submit(client, patient(other, "PE2", family=family, phone=None, birth_date="1988-04-12"))
    assert b.headers["X-Match-Outcome"] == "potential"
    a_id, b_id, golden_a = await _source_id(a), await _source_id(b), a.headers["X-CRUID"]
    (task,) = [
        t
        for t in await store.search("Task", {"focus": f"Patient/{b_id}"})
        if t["code"]["coding"][0]["code"] == POTENTIAL_MATCH
    ]
    assert f"Patient/{golden_a}" in json.dumps(task["input"]) and task["status"] == "requested"

    assert (await client.delete(f"/fhir/Patient/{a_id}")).status == 200

    closed = await store.read("Task", task["id"])
    assert closed is not None and closed["status"] == "cancelled"
    assert closed["businessStatus"]["text"] == "resolved-by-retraction"
    (event,) = await _deletion_events(store, a_id)
    assert f"Task/{task['id']}" in [e["what"]["reference"] for e in event["entity"]]
    assert await store.assert_consistent(b_id)


async def test_a_record_merged_into_another_is_deleted_though_its_trail_names_it(client, store, facility):
    """The subsumed record of a POS merge is named by its AuditEvents before its golden record links it: HAPI
    looks at such a reference first, and refused the delete (409) until the launcher let the trail's
    references never block one. The golden record's link still would: it goes in the same transaction."""
    (subsumed, a), (_, b) = await two_people(client, facility)
    old_id, keep_id = source_id(a), source_id(b)
    assert (await client.put(f"/fhir/Patient/{old_id}", json=merged(subsumed, keep_id))).status == 200

    resp = await client.delete(f"/fhir/Patient/{old_id}")

    assert resp.status == 200, await resp.text()
    assert await store.read("Patient", old_id) is None
    golden = await store.read("Patient", b.headers["X-CRUID"])
    assert golden is not None and records.source_ids_of(golden) == [keep_id]
    assert len(await _deletion_events(store, old_id)) == 1


async def test_a_survivor_with_records_merged_into_it_is_refused_until_those_go(client, store, facility):
    """Records its POS merged into it name the survivor (replaced-by): deleting it first is a 409 naming them,
    at once and with nothing written (it used to be retried as a concurrent change until HAPI's refusal
    came back as one); once they are deleted, the survivor can be."""
    (subsumed, a), (_, b) = await two_people(client, facility)
    old_id, keep_id = source_id(a), source_id(b)
    assert (await client.put(f"/fhir/Patient/{old_id}", json=merged(subsumed, keep_id))).status == 200
    before = await _history(store, "Patient", keep_id)

    refused = await client.delete(f"/fhir/Patient/{keep_id}")

    assert refused.status == 409
    outcome = await refused.json(content_type=None)
    assert f"Patient/{old_id}" in outcome["issue"][0]["diagnostics"]
    assert "Concurrent change" not in outcome["issue"][0]["diagnostics"]
    assert await _history(store, "Patient", keep_id) == before and not await _deletion_events(store, keep_id)
    assert (await client.delete(f"/fhir/Patient/{old_id}")).status == 200
    assert (await client.delete(f"/fhir/Patient/{keep_id}")).status == 200


async def test_hapi_still_refuses_to_delete_a_record_a_golden_record_links(store, client, facility):
    """Only the trail's paths are let through: a plain DELETE of a source record its golden record still
    links is refused by HAPI (409), AuditEvents naming it or not."""
    resp = await _submit(client, patient(facility, "LINKED", family=unique_surname()))
    source = await _source_id(resp)
    async with store.session.delete(f"{store.base_url}/Patient/{source}") as refused:
        assert refused.status == 409
        assert "Patient.link" in await refused.text()
    assert await store.read("Patient", source) is not None


async def test_without_the_review_candidate_parameter_the_retraction_waits_503(
    aiohttp_client, aiohttp_server, hapi_url, settings, store, facility
):
    """Before the mediator installed ``review-candidate`` (HAPI: 400 unknown search parameter), the Tasks
    naming a person left without records cannot be found: retracting its last record is 503, nothing
    written, and the same request succeeds once HAPI knows the parameter."""
    forward = MissingSearchParameter(hapi_url, "review-candidate")
    proxy = await serve_proxy(aiohttp_server, forward.handle)
    proxied = await aiohttp_client(create_app(dataclasses.replace(settings, hapi_base_url=proxy)))
    resp = await _submit(proxied, patient(facility, "NOSP", family=unique_surname()))
    source = await _source_id(resp)

    refused = await proxied.delete(f"/fhir/Patient/{source}")

    assert refused.status == 503
    assert (await refused.json(content_type=None))["issue"][0]["code"] == "transient"
    assert await store.read("Patient", source) is not None and not await _deletion_events(store, source)
    forward.installed = True
    assert (await proxied.delete(f"/fhir/Patient/{source}")).status == 200


async def test_the_capability_statement_lists_delete(client):
    statement = await (await client.get("/fhir/metadata")).json(content_type=None)
    (patient_resource,) = statement["rest"][0]["resource"]
    assert {"code": "delete"} in patient_resource["interaction"]


async def test_a_batch_deletes_a_transaction_refuses_delete_entries(client, store, facility):
    _, a_id, b_id, golden_id = await _person_of_two(client, facility)
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"Patient/{a_id}"}}],
    }
    refused = await client.post("/fhir", json=transaction)
    assert refused.status == 400
    assert "transaction" in (await refused.json(content_type=None))["issue"][0]["diagnostics"]
    assert await store.read("Patient", a_id) is not None

    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "DELETE", "url": f"Patient/{a_id}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{golden_id}"}},
        ],
    }
    answer = await (await client.post("/fhir", json=batch)).json(content_type=None)
    assert [e["response"]["status"] for e in answer["entry"]] == ["200 OK", "403 Forbidden"]
    assert await store.read("Patient", a_id) is None
    await store.assert_consistent(b_id)


async def test_a_replica_that_read_the_record_before_another_deleted_it_writes_nothing(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Each replica holds only its own key locks. Replica two reads the source record, and is held (by a
    proxy before HAPI) before it reads the golden record until replica one has deleted the record: two
    then reads the golden record already without the link, and finds the deletion instead of writing it
    again (HAPI ignores If-Match on a DELETE; without the check a second AuditEvent was written)."""
    one = await aiohttp_client(create_app(settings))
    _, a_id, b_id, golden_id = await _person_of_two(one, facility)
    arrived, gate = asyncio.Event(), asyncio.Event()

    async def forward(request: web.Request) -> web.Response:
        if request.method == "GET" and request.path == f"/fhir/Patient/{golden_id}" and not gate.is_set():
            arrived.set()
            await gate.wait()
        return await forward_to_hapi(hapi_url, request)

    proxied = dataclasses.replace(settings, hapi_base_url=await serve_proxy(aiohttp_server, forward))
    two = await aiohttp_client(create_app(proxied))
    late = asyncio.create_task(two.delete(f"/fhir/Patient/{a_id}"))
    await arrived.wait()  # two has read the source record and waits for the golden record

    assert (await one.delete(f"/fhir/Patient/{a_id}")).status == 200
    gate.set()
    assert (await late).status == 200

    assert len(await _deletion_events(store, a_id)) == 1
    assert [e["request"]["method"] for e in await _history(store, "Patient", a_id)].count("DELETE") == 1
    await store.assert_consistent(b_id)
