"""A point-of-service system merges two of its own records (IHE PMIR ITI-93): the subsumed record, sent
``active: false`` with one ``replaced-by`` link, joins its survivor's person; every other link is refused."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest

from mediator import audit, linking, records, rematch
from mediator.config import RegistryConfig
from mediator.context import METRICS
from mediator.errors import Forbidden, InvalidInput, Unprocessable
from mediator.review import POSSIBLE_DUPLICATE
from mediator.settings import Settings
from tests.conftest import metric_samples, patient, unique_surname

CLINIC = {"X-OpenHIM-ClientID": "clinic"}


def replaced_by(other: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "replaced-by", "other": other}]


def merged(resource: dict[str, Any], survivor_id: str) -> dict[str, Any]:
    """``resource`` as its POS sends it after merging it into ``survivor_id``."""
    return {**resource, "active": False, "link": replaced_by({"reference": f"Patient/{survivor_id}"})}


async def two_people(client: Any, system: str, headers: dict[str, str] | None = None) -> tuple[Any, Any]:
    """Two records of one system that matching keeps apart: (subsumed, survivor) as (resource, answer)."""
    subsumed = patient(system, "OLD-1", family=unique_surname())
    survivor = patient(system, "KEEP-1", family=unique_surname(), given="Halima", birth_date="1990-01-02")
    a = await client.post("/fhir/Patient", json=subsumed, headers=headers)
    b = await client.post("/fhir/Patient", json=survivor, headers=headers)
    assert a.status == b.status == 201 and a.headers["X-CRUID"] != b.headers["X-CRUID"]
    return (subsumed, a), (survivor, b)


def source_id(answer: Any) -> str:
    return answer.headers["Location"].split("/")[1]


def _calls(app: Any, call: str) -> float:
    samples = metric_samples(generate_latest(app[METRICS].registry).decode())
    return samples.get(("cr_fhir_store_call_duration_seconds_count", (("call", call),)), 0.0)


# -- the merge itself ------------------------------------------------------------------------------------


async def test_a_replaced_by_update_joins_the_survivors_person_and_keeps_the_link(client, store, facility):
    (subsumed, a), (_, b) = await two_people(client, facility)
    old_id, keep_id, old_golden = source_id(a), source_id(b), a.headers["X-CRUID"]

    resp = await client.put(f"/fhir/Patient/{old_id}", json=merged(subsumed, keep_id))

    assert resp.status == 200, await resp.text()
    assert resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    assert resp.headers["X-Match-Outcome"] == "pos-merge"
    stored = await store.read("Patient", old_id)
    assert stored["active"] is False
    assert records.golden_id_of(stored) == b.headers["X-CRUID"]
    assert records.pos_survivor(stored) == keep_id, "the replaced-by link is kept"
    assert records.link_decision(stored) == records.POS_MERGE and records.is_manually_linked(stored)
    golden = await store.assert_consistent(keep_id)
    assert set(records.source_ids_of(golden)) == {old_id, keep_id}
    left = await store.read("Patient", old_golden)
    assert left["active"] is False and records.source_ids_of(left) == [], "no sources left: inactive"
    assert records.replaced_by(left) == golden["id"], "the old CRUID leads to the survivor's person"
    assert await store.search("Task", {"subject": f"Patient/{golden['id']}"}) == []


async def test_the_audit_event_says_it_was_the_pos_merge_without_demographics(client, store, facility):
    (subsumed, a), (_, b) = await two_people(client, facility)
    resp = await client.put(
        f"/fhir/Patient/{source_id(a)}",
        json=merged(subsumed, source_id(b)),
        headers={"X-OpenHIM-TransactionID": "tx-merge-1"},
    )
    assert resp.status == 200
    events = await store.search("AuditEvent", {"entity": f"Patient/{source_id(a)}"})
    entity = next(
        e
        for ev in events
        for e in ev["entity"]
        if audit.details_of(e).get("openhim-transaction") == "tx-merge-1"
    )
    details = audit.details_of(entity)
    assert details["decision"] == details["rule"] == "pos-merge"
    assert details["replaced-by"] == f"Patient/{source_id(b)}"
    assert details["previous-cruid"] == a.headers["X-CRUID"] and details["cruid"] == b.headers["X-CRUID"]
    event = next(ev for ev in events if entity in ev["entity"])
    assert subsumed["name"][0]["family"] not in str(event) and "birthDate" not in str(event)


def _by_post(resource: dict[str, Any], old_id: str) -> tuple[str, str, dict[str, Any]]:
    return "POST", "Patient", resource


def _by_conditional_put(resource: dict[str, Any], old_id: str) -> tuple[str, str, dict[str, Any]]:
    ident = resource["identifier"][0]
    return "PUT", f"Patient?identifier={ident['system']}|{ident['value']}", resource


def _by_put(resource: dict[str, Any], old_id: str) -> tuple[str, str, dict[str, Any]]:
    return "PUT", f"Patient/{old_id}", resource


@pytest.mark.parametrize("how", [_by_post, _by_conditional_put, _by_put])
@pytest.mark.parametrize("carrier", ["request", "transaction", "batch"])
async def test_every_way_of_submitting_takes_the_merge_by_identifier(client, store, facility, how, carrier):
    (subsumed, a), (survivor, b) = await two_people(client, facility)
    old_id = source_id(a)
    body = {
        **subsumed,
        "active": False,
        "link": replaced_by(
            {"identifier": {"system": facility, "value": survivor["identifier"][0]["value"]}}
        ),
    }
    method, url, resource = how(body, old_id)
    if carrier == "request":
        resp = await client.request(method, f"/fhir/{url}", json=resource)
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    else:
        entry = {"resource": resource, "request": {"method": method, "url": url}}
        resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": carrier, "entry": [entry]})
        assert resp.status == 200, await resp.text()
        answer = (await resp.json(content_type=None))["entry"][0]
        assert answer["response"]["status"] == "200 OK", answer
        cruids = [i["value"] for i in answer["resource"]["identifier"] if i["value"].startswith("cr-")]
        assert cruids == [b.headers["X-CRUID"]]
    stored = await store.read("Patient", old_id)
    assert records.golden_id_of(stored) == b.headers["X-CRUID"]
    assert records.pos_survivor(stored) == source_id(b)


async def test_a_transaction_may_submit_the_survivor_and_merge_into_it(client, store, facility):
    """The survivor staged by an earlier entry of the same transaction is the one merged into."""
    (subsumed, a), _ = await two_people(client, facility)
    fresh = patient(facility, "NEW-7", family=unique_surname(), given="Zawadi", birth_date="1979-09-09")
    fresh_id = records.source_record_id(facility, "NEW-7")
    entries = [
        {"resource": fresh, "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": merged(subsumed, fresh_id),
            "request": {"method": "PUT", "url": f"Patient/{source_id(a)}"},
        },
    ]
    resp = await client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert resp.status == 200, await resp.text()
    new_golden = records.golden_id_of(await store.read("Patient", fresh_id))
    assert records.golden_id_of(await store.read("Patient", source_id(a))) == new_golden


async def test_an_old_person_with_other_sources_stays_and_is_put_up_for_review(closed, store):
    """clinic's C1 and lab's L1 are one person; clinic merges C1 into its other record: lab's L1 stays
    where it is, and an admin is asked whether that person is the survivor's too."""
    client = closed.client
    survivor = patient(closed.clinic, "C2", family=unique_surname(), given="Halima", birth_date="1990-01-02")
    b = await client.post("/fhir/Patient", json=survivor, headers=CLINIC)
    assert b.status == 201
    c1 = patient(closed.clinic, "C1", family=closed.family)
    old_id = records.source_record_id(closed.clinic, "C1")
    old_golden = closed.clinic_answer["X-CRUID"]

    transactions = _calls(client.server.app, "transaction")

    resp = await client.put(f"/fhir/Patient/{old_id}", json=merged(c1, source_id(b)), headers=CLINIC)

    assert resp.status == 200, await resp.text()
    assert resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    assert _calls(client.server.app, "transaction") == transactions + 1, "records, Task, AuditEvent: one"
    left = await store.read("Patient", old_golden)
    assert left["active"] is True
    assert records.source_ids_of(left) == [records.source_record_id(closed.lab, "L1")]
    code = f"{records.REVIEW_TYPE_SYSTEM}|{POSSIBLE_DUPLICATE}"
    tasks = await store.search("Task", {"subject": f"Patient/{b.headers['X-CRUID']}", "code": code})
    assert len(tasks) == 1 and tasks[0]["status"] == "requested"
    assert tasks[0]["input"][0]["valueReference"]["reference"] == f"Patient/{old_golden}"

    # matching must not undo the POS's merge: C1 resubmitted without the link still matches L1 exactly
    again = await client.put(f"/fhir/Patient/{old_id}", json=c1, headers=CLINIC)
    assert again.status == 200, await again.text()
    assert again.headers["X-CRUID"] == b.headers["X-CRUID"]
    assert again.headers["X-Match-Outcome"] == "pos-merge"
    assert records.pos_survivor(await store.read("Patient", old_id)) == source_id(b)


# -- afterwards ------------------------------------------------------------------------------------------


async def test_a_lookup_of_the_subsumed_identifier_answers_the_survivors_cruid(client, facility):
    (subsumed, a), (_, b) = await two_people(client, facility)
    resp = await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))
    assert resp.status == 200
    pix = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|OLD-1"})
    assert pix.status == 200
    params = await pix.json(content_type=None)
    cruids = {
        p["valueIdentifier"]["value"]
        for p in params["parameter"]
        if p["name"] == "targetIdentifier" and p["valueIdentifier"]["value"].startswith("cr-")
    }
    assert cruids == {b.headers["X-CRUID"]}


@pytest.mark.parametrize("active", [False, True])
async def test_resubmitting_the_subsumed_record_without_the_link_keeps_the_merge(
    client, store, facility, active
):
    (subsumed, a), (_, b) = await two_people(client, facility)
    assert (
        await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))
    ).status == 200

    resp = await client.post("/fhir/Patient", json={**subsumed, "active": active})

    assert resp.status == 200 and resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    stored = await store.read("Patient", source_id(a))
    assert stored["active"] is active, "stored as sent"
    assert (
        records.pos_survivor(stored) == source_id(b) and records.golden_id_of(stored) == b.headers["X-CRUID"]
    )
    assert (await store.read("Patient", a.headers["X-CRUID"]))["active"] is False, (
        "not back on its old person"
    )


async def test_resubmitting_the_survivor_keeps_everything(client, store, facility):
    (subsumed, a), (survivor, b) = await two_people(client, facility)
    assert (
        await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))
    ).status == 200

    resp = await client.post("/fhir/Patient", json=survivor)

    assert resp.status == 200 and resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    golden = await store.assert_consistent(source_id(b))
    assert set(records.source_ids_of(golden)) == {source_id(a), source_id(b)}
    assert records.pos_survivor(await store.read("Patient", source_id(a))) == source_id(b)


async def z_merged_into_subsumed(client: Any, facility: str) -> tuple[Any, Any, Any]:
    """:func:`two_people`, and a third record Z its POS merged into the subsumed one (A); Z's answer last."""
    (subsumed, a), (survivor, b) = await two_people(client, facility)
    z = patient(facility, "Z-1", family=unique_surname(), given="Rehema", birth_date="1955-05-05")
    z_answer = await client.post("/fhir/Patient", json=z)
    assert (
        await client.put(f"/fhir/Patient/{source_id(z_answer)}", json=merged(z, source_id(a)))
    ).status == 200
    return (subsumed, a), (survivor, b), z_answer


@pytest.mark.parametrize("chain", [False, True])
async def test_a_survivor_matching_takes_to_another_person_takes_its_subsumed_records_along(
    client, store, facility, chain
):
    """``chain``: Z was merged into A before A into B, so Z goes with B's person too, as A does."""
    if chain:
        (subsumed, a), (_, b), z_answer = await z_merged_into_subsumed(client, facility)
    else:
        (subsumed, a), (_, b) = await two_people(client, facility)
    assert (
        await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))
    ).status == 200
    family = unique_surname()
    other = await client.post(
        "/fhir/Patient", json=patient(facility.replace("facility-", "lab-"), "P1", family=family)
    )
    assert other.status == 201

    resp = await client.post("/fhir/Patient", json=patient(facility, "KEEP-1", family=family))

    assert resp.status == 200 and resp.headers["X-Match-Outcome"] == "match"
    assert resp.headers["X-CRUID"] == other.headers["X-CRUID"]
    moved = await store.read("Patient", source_id(a))
    assert records.golden_id_of(moved) == other.headers["X-CRUID"] and records.pos_survivor(
        moved
    ) == source_id(b)
    golden = await store.assert_consistent(source_id(b))
    assert source_id(a) in records.source_ids_of(golden)
    if chain:
        assert source_id(z_answer) in records.source_ids_of(golden)
        assert records.pos_survivor(await store.read("Patient", source_id(z_answer))) == source_id(a)
    left = await store.read("Patient", b.headers["X-CRUID"])
    assert left["active"] is False and records.source_ids_of(left) == []
    events = await store.search("AuditEvent", {"entity": f"Patient/{source_id(a)}"})
    assert any("moved along" in str(ev) for ev in events)


async def test_a_subsumed_record_merged_on_takes_what_was_merged_into_it_along(client, store, facility):
    """Z was merged into A; then A into B: Z goes with A to B's person, and names A still."""
    (subsumed, a), (_, b), z_answer = await z_merged_into_subsumed(client, facility)

    resp = await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))

    assert resp.status == 200 and resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    golden = await store.assert_consistent(source_id(b))
    assert set(records.source_ids_of(golden)) == {source_id(a), source_id(b), source_id(z_answer)}
    z_stored = await store.read("Patient", source_id(z_answer))
    assert records.golden_id_of(z_stored) == golden["id"] and records.pos_survivor(z_stored) == source_id(a)
    left = await store.read("Patient", a.headers["X-CRUID"])
    assert left["active"] is False and records.source_ids_of(left) == []
    assert await store.search("Task", {"subject": f"Patient/{golden['id']}"}) == [], "nobody left behind"


async def test_a_merge_of_two_records_of_one_person_marks_it_and_moves_nothing(client, store, facility):
    family = unique_surname()
    subsumed = patient(facility, "ONE-1", family=family)
    a = await client.post("/fhir/Patient", json=subsumed)
    b = await client.post("/fhir/Patient", json=patient(facility, "ONE-2", family=family))
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]

    resp = await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))

    assert resp.status == 200 and resp.headers["X-CRUID"] == b.headers["X-CRUID"]
    assert records.pos_survivor(await store.read("Patient", source_id(a))) == source_id(b)
    golden = await store.assert_consistent(source_id(b))
    assert set(records.source_ids_of(golden)) == {source_id(a), source_id(b)}
    assert await store.search("Task", {"subject": f"Patient/{golden['id']}"}) == []


async def test_the_same_merge_sent_twice_answers_the_same(client, store, facility):
    (subsumed, a), (_, b) = await two_people(client, facility)
    body = merged(subsumed, source_id(b))
    first = await client.put(f"/fhir/Patient/{source_id(a)}", json=body)
    second = await client.put(f"/fhir/Patient/{source_id(a)}", json=body)
    assert first.status == second.status == 200
    assert first.headers["X-CRUID"] == second.headers["X-CRUID"] == b.headers["X-CRUID"]
    golden = await store.assert_consistent(source_id(b))
    assert sorted(records.source_ids_of(golden)) == sorted([source_id(a), source_id(b)])


# -- refusals: a 4xx naming Patient.link[i], nothing written ---------------------------------------------


async def _refused(
    client, store, url: str, body: dict[str, Any], status: int, where: str, headers=None
) -> str:
    """Send ``body`` to ``url``; assert the refusal, and that the record sent was not written."""
    sent_id = records.source_record_id(body["identifier"][0]["system"], body["identifier"][0]["value"])
    before = await store.read("Patient", sent_id)
    resp = await client.put(url, json=body, headers=headers)
    assert resp.status == status, await resp.text()
    outcome = await resp.json(content_type=None)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [where]
    after = await store.read("Patient", sent_id)
    assert (before and records.version_of(before)) == (after and records.version_of(after)), "nothing written"
    return str(outcome["issue"][0]["diagnostics"])


async def test_a_survivor_that_does_not_exist_is_422(client, store, facility):
    (subsumed, a), _ = await two_people(client, facility)
    gone = records.source_record_id(facility, "NEVER-SENT")
    url = f"/fhir/Patient/{source_id(a)}"
    text = await _refused(client, store, url, merged(subsumed, gone), 422, "Patient.link[0]")
    assert "not known" in text


async def test_the_record_itself_as_survivor_is_422(client, store, facility):
    (subsumed, a), _ = await two_people(client, facility)
    url = f"/fhir/Patient/{source_id(a)}"
    await _refused(client, store, url, merged(subsumed, source_id(a)), 422, "Patient.link[0]")


async def test_a_survivor_that_was_itself_replaced_is_422_naming_its_survivor(client, store, facility):
    (subsumed, a), (_, b) = await two_people(client, facility)
    assert (
        await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, source_id(b)))
    ).status == 200
    third = patient(facility, "THIRD-1", family=unique_surname(), given="Neema", birth_date="1970-03-03")
    c = await client.post("/fhir/Patient", json=third)
    assert c.status == 201
    url = f"/fhir/Patient/{source_id(c)}"
    text = await _refused(client, store, url, merged(third, source_id(a)), 422, "Patient.link[0]")
    assert f"Patient/{source_id(b)}" in text


async def test_a_survivor_of_another_client_is_refused_without_telling_whether_it_exists(closed, store):
    """By reference: answered as a survivor never stored (422, the same text; before, 403 told the client
    that the other client holds that identifier). By identifier: 403 before anything is read."""
    survivor = records.source_record_id(closed.lab, "L1")
    never = records.source_record_id(closed.lab, "NEVER-SENT")
    c1 = patient(closed.clinic, "C1", family=closed.family)
    url = f"/fhir/Patient/{records.source_record_id(closed.clinic, 'C1')}"
    texts = [
        (await _refused(closed.client, store, url, merged(c1, rid), 422, "Patient.link[0]", CLINIC)).replace(
            rid, "<id>"
        )
        for rid in (survivor, never)
    ]
    assert texts[0] == texts[1] and "not known" in texts[0]
    by_identifier = {**c1, "link": replaced_by({"identifier": {"system": closed.lab, "value": "L1"}})}
    await _refused(closed.client, store, url, by_identifier, 403, "Patient.link[0]", CLINIC)


async def test_a_survivor_named_by_a_shared_identifier_is_403(client, store, facility, settings):
    """A national id is matching evidence, never a record key: it names no record a client may write."""
    (subsumed, a), _ = await two_people(client, facility)
    nid = {"identifier": {"system": settings.shared_identifier_systems[0], "value": "NID-1"}}
    url = f"/fhir/Patient/{source_id(a)}"
    await _refused(client, store, url, {**subsumed, "link": replaced_by(nid)}, 403, "Patient.link[0]")


async def test_two_replaced_by_links_are_400(client, store, facility):
    (subsumed, a), (_, b) = await two_people(client, facility)
    body = {**merged(subsumed, source_id(b))}
    body["link"] = body["link"] * 2
    await _refused(client, store, f"/fhir/Patient/{source_id(a)}", body, 400, "Patient.link[1]")


async def test_a_link_to_a_golden_record_is_400(client, store, facility, settings):
    (subsumed, a), (_, b) = await two_people(client, facility)
    url = f"/fhir/Patient/{source_id(a)}"
    await _refused(client, store, url, merged(subsumed, b.headers["X-CRUID"]), 400, "Patient.link[0]")
    cruid = {"identifier": {"system": settings.cruid_system, "value": b.headers["X-CRUID"]}}
    await _refused(client, store, url, {**subsumed, "link": replaced_by(cruid)}, 400, "Patient.link[0]")


@pytest.mark.parametrize("kind", ["refer", "seealso", "replaces"])
async def test_any_other_link_type_is_400_saying_only_replaced_by_is_taken(client, store, facility, kind):
    (subsumed, a), (_, b) = await two_people(client, facility)
    links = [
        {"type": "replaced-by", "other": {"reference": f"Patient/{source_id(b)}"}},
        {"type": kind, "other": {"reference": f"Patient/{source_id(b)}"}},
    ]
    text = await _refused(
        client, store, f"/fhir/Patient/{source_id(a)}", {**subsumed, "link": links}, 400, "Patient.link[1]"
    )
    assert "replaced-by" in text
    assert (await client.post("/fhir/Patient", json={**subsumed, "link": links[1:]})).status == 400


async def test_a_refused_entry_fails_a_transaction_and_only_itself_in_a_batch(client, store, facility):
    (subsumed, a), _ = await two_people(client, facility)
    other = patient(facility, "OTHER-9", family=unique_surname(), given="Imani", birth_date="1966-06-06")
    bad = {**subsumed, "link": [{"type": "seealso", "other": {"reference": "Patient/src-x"}}]}
    entries = [
        {"resource": other, "request": {"method": "POST", "url": "Patient"}},
        {"resource": bad, "request": {"method": "PUT", "url": f"Patient/{source_id(a)}"}},
    ]
    resp = await client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    assert resp.status == 400
    assert await store.read("Patient", records.source_record_id(facility, "OTHER-9")) is None
    resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    statuses = [e["response"]["status"] for e in (await resp.json(content_type=None))["entry"]]
    assert statuses == ["201 Created", "400 Bad Request"]


# -- the pure rule ---------------------------------------------------------------------------------------


def test_merge_link_reads_one_replaced_by_link_and_refuses_the_rest():
    assert linking.merge_link(None, "urn:cruid") is None and linking.merge_link([], "urn:cruid") is None
    link = linking.merge_link(replaced_by({"reference": "http://cr/fhir/Patient/src-1"}), "urn:cruid")
    assert link == linking.MergeLink(0, "src-1")
    by_id = linking.merge_link(replaced_by({"identifier": {"system": "urn:s", "value": " 7 "}}), "urn:cruid")
    assert by_id == linking.MergeLink(0, records.source_record_id("urn:s", "7"), "urn:s")
    for bad in (
        [{"type": "replaced-by"}],
        replaced_by({"reference": "Patient?identifier=urn:s|7"}),
        replaced_by({"reference": "Patient/src-1", "identifier": {"system": "urn:s", "value": "7"}}),
        replaced_by({"identifier": {"system": "urn:s"}}),
        ["not a link"],
    ):
        with pytest.raises(InvalidInput):
            linking.merge_link(bad, "urn:cruid")


def test_merge_target_refusals_in_order():
    link = linking.MergeLink(0, "src-b")
    survivor = {
        "resourceType": "Patient",
        "id": "src-b",
        "identifier": [{"system": "urn:s", "value": "b"}],
        "link": [{"type": "refer", "other": {"reference": "Patient/cr-b"}}],
    }
    survivor["id"] = records.source_record_id("urn:s", "b")
    link = linking.MergeLink(0, survivor["id"])
    assert linking.merge_target(link, "src-a", survivor, lambda s: s == "urn:s") == "cr-b"
    with pytest.raises(Unprocessable):  # by reference, not the client's: as if unknown
        linking.merge_target(link, "src-a", survivor, lambda s: False)
    with pytest.raises(Forbidden):  # by identifier: refused before anything is known of the record
        linking.merge_target(linking.MergeLink(0, "src-z", "urn:other"), "src-a", None, lambda s: False)
    with pytest.raises(Unprocessable):
        linking.merge_target(link, survivor["id"], survivor, lambda s: True)
    with pytest.raises(Unprocessable):
        linking.merge_target(link, "src-a", None, lambda s: True)


def test_the_link_state_of_a_merged_record_round_trips():
    source = records.build_source_record(
        patient("urn:s", "a", family="X"),
        "src-a",
        client_id=None,
        golden_id="cr-b",
        block_keys=[],
        survivor="src-b",
    )
    state = records.link_state(source)
    assert state == {"kind": "source", "golden": "cr-b", "manual": True, "pos_merge": "src-b"}
    assert records.link_state(records.with_link_state(source, state)) == state
    plain = records.with_link_state(source, {"kind": "source", "golden": "cr-c", "manual": True})
    assert records.link_decision(plain) == records.MANUAL and records.pos_survivor(plain) is None


def test_followers_are_the_records_merged_into_the_survivor():
    def source(sid: str, survivor: str | None) -> records.Resource:
        return records.build_source_record(
            patient("urn:s", sid, family="X"),
            sid,
            client_id=None,
            golden_id="cr-1",
            block_keys=[],
            survivor=survivor,
        )

    found = [source("src-a", "src-s"), source("src-b", None), None, source("src-c", "src-other")]
    assert linking.followers("src-s", found) == ["src-a"]
    # Z was merged into A before A into S: Z is with S's person by its POS's decisions too
    chain = [source("src-z", "src-a"), *found, source("src-y", "src-z")]
    assert linking.followers("src-s", chain) == ["src-a", "src-z", "src-y"]
    assert linking.followers_of("src-s", {"src-a": "src-s", "src-z": "src-a", "src-b": None}) == [
        "src-a",
        "src-z",
    ]


def test_the_rematch_plan_keeps_a_survivor_with_the_records_merged_into_it():
    """As the live workflow does (test_resubmitting_the_survivor_keeps_everything): the subsumed record is not
    another record the survivor would leave, so the dry run lists no split."""
    cfg = RegistryConfig.from_settings(Settings())
    survivor, subsumed = records.source_record_id("urn:s", "KEEP"), records.source_record_id("urn:s", "OLD")
    keep = patient("urn:s", "KEEP", family="Okafor", given="Halima", birth_date="1990-01-02")
    old = patient("urn:s", "OLD", family="Mwangi", given="Amina", birth_date="1987-04-12")

    def snapshot(merged_into: str | None) -> rematch.Snapshot:
        stored = [
            records.build_source_record(keep, survivor, client_id=None, golden_id="cr-1", block_keys=[]),
            records.build_source_record(
                old, subsumed, client_id=None, golden_id="cr-1", block_keys=[], survivor=merged_into
            ),
        ]
        sources = {r["id"]: rematch.source_facts(r, cfg.rules) for r in stored}
        golden = records.with_source(
            records.with_source(records.new_golden("cr-1", "urn:c"), survivor), subsumed
        )
        return rematch.Snapshot(sources, {"cr-1": rematch.golden_facts(golden)}, cfg.rules)

    assert [c.kind for c in rematch.plan(snapshot(None), cfg).changes] == ["split"], "the control"
    assert rematch.plan(snapshot(survivor), cfg).changes == []


def test_the_rematch_plan_keeps_a_survivor_with_the_records_merged_into_its_merged_ones():
    """Z merged into OLD before OLD into KEEP: all three stay one person, as the live workflow keeps them."""
    cfg = RegistryConfig.from_settings(Settings())
    ids = {key: records.source_record_id("urn:s", key) for key in ("KEEP", "OLD", "Z")}
    born = {"KEEP": "1990-01-02", "OLD": "1987-04-12", "Z": "1955-05-05"}
    into = {"KEEP": None, "OLD": ids["KEEP"], "Z": ids["OLD"]}
    stored = [
        records.build_source_record(
            patient("urn:s", key, family=unique_surname(), given=f"Given{key}", birth_date=day),
            ids[key],
            client_id=None,
            golden_id="cr-1",
            block_keys=[],
            survivor=into[key],
        )
        for key, day in born.items()
    ]
    golden = records.new_golden("cr-1", "urn:c")
    for sid in ids.values():
        golden = records.with_source(golden, sid)
    sources = {r["id"]: rematch.source_facts(r, cfg.rules) for r in stored}
    snapshot = rematch.Snapshot(sources, {"cr-1": rematch.golden_facts(golden)}, cfg.rules)

    assert rematch.plan(snapshot, cfg).changes == []


async def test_the_capability_statement_says_which_links_are_taken(client):
    statement = await (await client.get("/fhir/metadata")).json(content_type=None)
    patient_resource = statement["rest"][0]["resource"][0]
    assert "replaced-by" in patient_resource["documentation"]
