"""Doubtful decisions leave reviewable ``Task``s in HAPI; auto-matches into two people are flagged."""

from __future__ import annotations

from mediator import records
from mediator.fhir_client import HapiClient
from mediator.review import POSSIBLE_DUPLICATE, POTENTIAL_MATCH
from tests.conftest import patient, unique_phone, unique_surname


def _kind(task) -> str:
    return task["code"]["coding"][0]["code"]


async def test_potential_match_gets_its_own_golden_and_a_review_task(client, store, facility):
    family = unique_surname()
    other = facility.replace("facility-", "hc-")
    a = await client.post("/fhir/Patient", json=patient(facility, "PM1", family=family, phone=unique_phone()))
    # same name, another birth year, no phone: not enough to merge automatically
    doubtful = patient(other, "PM2", family=family, phone=None, birth_date="1988-04-12")
    b = await client.post("/fhir/Patient", json=doubtful)
    assert b.status == 201
    assert b.headers["X-Match-Outcome"] == "potential"
    assert a.headers["X-CRUID"] != b.headers["X-CRUID"]
    b_id = (await b.json(content_type=None))["id"]
    tasks = await store.search("Task", {"focus": f"Patient/{b_id}"})
    assert {_kind(t) for t in tasks} == {POTENTIAL_MATCH}
    about_a = [
        t
        for t in tasks
        if {"text": "candidate"} in [i["type"] for i in t["input"]]
        and any(
            i.get("valueReference", {}).get("reference") == f"Patient/{a.headers['X-CRUID']}"
            for i in t["input"]
        )
    ]
    assert len(about_a) == 1, "one Task for the doubtful pair (other namesakes may add their own)"
    task = about_a[0]
    assert task["status"] == "requested"
    assert task["for"]["reference"] == f"Patient/{b.headers['X-CRUID']}"
    inputs = {i["type"]["text"]: i for i in task["input"]}
    assert inputs["score"]["valueDecimal"] > 0

    # the same doubt raised again stays one Task
    again = await client.post("/fhir/Patient", json=doubtful)
    assert again.status == 200
    assert len(await store.search("Task", {"focus": f"Patient/{b_id}"})) == len(tasks)


async def test_auto_match_into_two_people_links_the_best_and_flags_the_other(
    client, store, facility, settings
):
    nid_system = settings.shared_identifier_systems[0]
    nid = {"system": nid_system, "value": f"NID-{unique_surname()}"}
    maiden, married, phone = unique_surname(), unique_surname(), unique_phone()
    a = await client.post(
        "/fhir/Patient", json=patient(facility, "A", family=maiden, phone=None, extra_identifiers=[nid])
    )
    b = await client.post("/fhir/Patient", json=patient(facility, "B", family=married, phone=phone))
    assert a.headers["X-CRUID"] != b.headers["X-CRUID"]
    c = await client.post(
        "/fhir/Patient",
        json=patient(facility, "C", family=married, phone=phone, extra_identifiers=[nid]),
    )
    assert c.headers["X-Match-Outcome"] == "match"
    assert c.headers["X-CRUID"] in (a.headers["X-CRUID"], b.headers["X-CRUID"])
    linked = c.headers["X-CRUID"]
    flagged = b.headers["X-CRUID"] if linked == a.headers["X-CRUID"] else a.headers["X-CRUID"]
    tasks = await store.search(
        "Task", {"subject": f"Patient/{linked}", "code": f"{records.REVIEW_TYPE_SYSTEM}|{POSSIBLE_DUPLICATE}"}
    )
    assert len(tasks) == 1
    assert tasks[0]["input"][0]["valueReference"]["reference"] == f"Patient/{flagged}"


async def test_a_doubt_about_a_person_created_in_the_same_transaction_is_raised_without_reading(
    client, store, facility, monkeypatch
):
    """B is a potential match of A, and A's golden record is created by the same transaction: the Task
    about the pair cannot exist yet, so it is written without being looked up in HAPI first."""
    task_reads: list[str] = []
    original = HapiClient.read

    async def counting_read(self, resource_type, resource_id):
        if resource_type == "Task":
            task_reads.append(resource_id)
        return await original(self, resource_type, resource_id)

    monkeypatch.setattr(HapiClient, "read", counting_read)
    family = unique_surname()
    other = facility.replace("facility-", "hc-")
    entries = [
        patient(facility, "N1", family=family, phone=unique_phone()),
        patient(other, "N2", family=family, phone=None, birth_date="1988-04-12"),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": p, "request": {"method": "POST", "url": "Patient"}} for p in entries],
    }
    resp = await client.post("/fhir", json=bundle)
    assert resp.status == 200, await resp.text()
    out = await resp.json(content_type=None)
    a_id, b_id = (e["resource"]["id"] for e in out["entry"])
    a_golden = (await store.assert_consistent(a_id))["id"]
    tasks = await store.search("Task", {"focus": f"Patient/{b_id}"})
    assert [t["input"][0]["valueReference"]["reference"] for t in tasks] == [f"Patient/{a_golden}"]
    assert {_kind(t) for t in tasks} == {POTENTIAL_MATCH}
    assert task_reads == []
