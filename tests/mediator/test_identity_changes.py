"""Adversarial tests of the two identity-changing features together: a POS's retraction (DELETE) and its
own merge (replaced-by), raced on two replicas and chained with admin decisions, batches and re-matches.

Replicas are two apps on the same HAPI, each with its own key locks (``CR_LOCKS=local``); one of them
reaches HAPI through a proxy that holds its transaction until the other has written, so the race is decided
by the test, not by timing."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from mediator import records
from mediator.app import create_app
from mediator.review import OPEN
from tests.conftest import patient, unique_phone, unique_surname
from tests.hapi_helpers import forward_to_hapi, is_transaction, serve_proxy
from tests.mediator.test_pos_merge import merged, source_id, two_people


async def _people_consistent(store: Any, golden_ids: list[str]) -> None:
    """Every source record a golden record lists exists and refers back to it; every POS merge names a live
    survivor that is not itself merged (no chain loops back); no open review Task is about a deleted
    record."""
    for golden_id in golden_ids:
        golden = await store.read("Patient", golden_id)
        assert golden is not None and records.is_golden(golden)
        listed = records.source_ids_of(golden)
        assert golden.get("active") is bool(listed), golden_id
        for sid in listed:
            source = await store.read("Patient", sid)
            assert source is not None, f"{golden_id} lists the deleted {sid}"
            assert records.golden_id_of(source) == golden_id, f"{sid} does not refer to {golden_id}"
            survivor_id = records.pos_survivor(source)
            if survivor_id is not None:
                survivor = await store.read("Patient", survivor_id)
                assert survivor is not None, f"{sid} is merged into the deleted {survivor_id}"
                assert records.pos_survivor(survivor) != sid, f"{sid}, {survivor_id}: merged into each other"


async def _no_open_tasks_about(store: Any, source_id_: str) -> None:
    tasks = await store.search("Task", {"focus": f"Patient/{source_id_}", "status": OPEN})
    assert tasks == [], f"open review Tasks about the deleted {source_id_}"


async def _replicas(
    aiohttp_client: Any, aiohttp_server: Any, settings: Any, hapi_url: str
) -> tuple[Any, Any, asyncio.Event, asyncio.Event]:
    """Replica one straight to HAPI; replica two through a proxy that holds its first transaction, once
    it decided, until ``gate`` is set (``arrived``: it is being held)."""
    arrived, gate = asyncio.Event(), asyncio.Event()

    async def forward(request: web.Request) -> web.Response:
        if not arrived.is_set() and is_transaction(request):
            arrived.set()
            await gate.wait()
        return await forward_to_hapi(hapi_url, request)

    one = await aiohttp_client(create_app(settings))
    proxied = dataclasses.replace(settings, hapi_base_url=await serve_proxy(aiohttp_server, forward))
    two = await aiohttp_client(create_app(proxied))
    return one, two, arrived, gate


async def _one_person_two_records(client: Any, system: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Two records of one system that matching puts with one person: (first, second, golden id)."""
    family = unique_surname()
    first, second = patient(system, "SAME-1", family=family), patient(system, "SAME-2", family=family)
    a = await client.post("/fhir/Patient", json=first)
    b = await client.post("/fhir/Patient", json=second)
    assert a.status == b.status == 201 and a.headers["X-CRUID"] == b.headers["X-CRUID"]
    return first, second, a.headers["X-CRUID"]


# -- replicas racing ------------------------------------------------------------------------------------


async def test_two_replicas_merging_two_records_into_each_other_let_one_merge_through(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """A replaced-by B on one replica while B replaced-by A on another, both records of one person: each
    writes its own record and the golden record unchanged, which HAPI stores as no new version — the
    If-Match on it does not see the other merge. Both used to be answered 200, leaving a loop (neither
    record can ever be deleted: each is the other's survivor)."""
    one, two, arrived, gate = await _replicas(aiohttp_client, aiohttp_server, settings, hapi_url)
    first, second, golden_id = await _one_person_two_records(one, facility)
    a_id, b_id = (records.source_record_id(facility, v) for v in ("SAME-1", "SAME-2"))

    late = asyncio.create_task(two.put(f"/fhir/Patient/{a_id}", json=merged(first, b_id)))
    await arrived.wait()  # two decided A -> B and holds its transaction
    early = await one.put(f"/fhir/Patient/{b_id}", json=merged(second, a_id))
    gate.set()
    late_answer = await late

    assert early.status == 200, await early.text()
    assert late_answer.status == 422, await late_answer.text()
    assert f"Patient/{a_id}" in (await late_answer.json(content_type=None))["issue"][0]["diagnostics"]
    assert records.pos_survivor(await store.read("Patient", b_id)) == a_id
    assert records.pos_survivor(await store.read("Patient", a_id)) is None
    await _people_consistent(store, [golden_id])


async def test_a_delete_racing_a_merge_into_the_record_on_another_replica_is_refused(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Replica two decided to delete B (no record merged into it yet) and holds its transaction; replica
    one merges A into B, within B's person (the golden record is written unchanged: no new version). The
    deletion must not leave A merged into a deleted record: HAPI's referential integrity refuses it and
    the retry finds A (409)."""
    one, two, arrived, gate = await _replicas(aiohttp_client, aiohttp_server, settings, hapi_url)
    first, _, golden_id = await _one_person_two_records(one, facility)
    a_id, b_id = (records.source_record_id(facility, v) for v in ("SAME-1", "SAME-2"))

    late = asyncio.create_task(two.delete(f"/fhir/Patient/{b_id}"))
    await arrived.wait()
    merge = await one.put(f"/fhir/Patient/{a_id}", json=merged(first, b_id))
    gate.set()
    deletion = await late

    assert merge.status == 200, await merge.text()
    assert deletion.status == 409, await deletion.text()
    assert f"Patient/{a_id}" in (await deletion.json(content_type=None))["issue"][0]["diagnostics"]
    assert await store.read("Patient", b_id) is not None
    await _people_consistent(store, [golden_id])


async def test_a_merge_racing_the_deletion_of_its_survivor_on_another_replica_is_422(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Replica two decided A -> B and holds its transaction; replica one deletes B meanwhile. The merge
    must not be confirmed into a deleted survivor."""
    one, two, arrived, gate = await _replicas(aiohttp_client, aiohttp_server, settings, hapi_url)
    first, _, golden_id = await _one_person_two_records(one, facility)
    a_id, b_id = (records.source_record_id(facility, v) for v in ("SAME-1", "SAME-2"))

    late = asyncio.create_task(two.put(f"/fhir/Patient/{a_id}", json=merged(first, b_id)))
    await arrived.wait()
    assert (await one.delete(f"/fhir/Patient/{b_id}")).status == 200
    gate.set()
    merge = await late

    assert merge.status == 422, await merge.text()
    assert records.pos_survivor(await store.read("Patient", a_id)) is None
    await _people_consistent(store, [golden_id])
    await _no_open_tasks_about(store, b_id)


async def test_a_resubmission_held_while_another_replica_deletes_the_record_is_not_lost(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Replica two decided an update of A and holds its transaction; replica one deletes A. The update
    written with If-Match on the version before the deletion is refused by HAPI and decided again: a POST
    is then a new record (201), consistently linked."""
    one, two, arrived, gate = await _replicas(aiohttp_client, aiohttp_server, settings, hapi_url)
    first, _, golden_id = await _one_person_two_records(one, facility)
    a_id, b_id = (records.source_record_id(facility, v) for v in ("SAME-1", "SAME-2"))

    late = asyncio.create_task(two.post("/fhir/Patient", json={**first, "gender": "other"}))
    await arrived.wait()
    assert (await one.delete(f"/fhir/Patient/{a_id}")).status == 200
    gate.set()
    again = await late

    assert again.status == 201, await again.text()
    stored = await store.read("Patient", a_id)
    assert stored is not None and stored["gender"] == "other"
    await _people_consistent(store, [golden_id, records.golden_id_of(stored) or ""])
    await store.assert_consistent(a_id)
    await store.assert_consistent(b_id)


# -- sequences --------------------------------------------------------------------------------------------


async def test_a_batch_deleting_a_survivor_before_and_after_its_merge(client, store, facility):
    """Entries are taken in order: DELETE B, then A -> B (B is gone: 422); and A -> C, then DELETE C (409:
    A is merged into it), then DELETE A, DELETE C."""
    (subsumed, a), (_, b) = await two_people(client, facility)
    a_id, b_id = source_id(a), source_id(b)
    third = patient(facility, "THIRD-1", family=unique_surname(), given="Neema", birth_date="1970-03-03")
    c = await client.post("/fhir/Patient", json=third)
    c_id = source_id(c)
    entries = [
        {"request": {"method": "DELETE", "url": f"Patient/{b_id}"}},
        {"resource": merged(subsumed, b_id), "request": {"method": "PUT", "url": f"Patient/{a_id}"}},
        {"resource": merged(subsumed, c_id), "request": {"method": "PUT", "url": f"Patient/{a_id}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{c_id}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{a_id}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{c_id}"}},
    ]
    resp = await client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries})
    statuses = [e["response"]["status"][:3] for e in (await resp.json(content_type=None))["entry"]]

    assert statuses == ["200", "422", "200", "409", "200", "200"]
    for gone in (a_id, b_id, c_id):
        assert await store.read("Patient", gone) is None
        await _no_open_tasks_about(store, gone)
    await _people_consistent(store, [a.headers["X-CRUID"], b.headers["X-CRUID"], c.headers["X-CRUID"]])


async def test_delete_then_resubmit_then_merge_into_the_new_record(client, store, facility):
    (subsumed, a), (survivor, b) = await two_people(client, facility)
    a_id, b_id = source_id(a), source_id(b)
    assert (await client.delete(f"/fhir/Patient/{b_id}")).status == 200
    assert (await client.put(f"/fhir/Patient/{a_id}", json=merged(subsumed, b_id))).status == 422

    again = await client.post("/fhir/Patient", json=survivor)
    assert again.status == 201
    merge = await client.put(f"/fhir/Patient/{a_id}", json=merged(subsumed, b_id))

    assert merge.status == 200 and merge.headers["X-CRUID"] == again.headers["X-CRUID"]
    pix = await client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|OLD-1"})
    assert again.headers["X-CRUID"] in str(await pix.json(content_type=None))
    await _people_consistent(store, [a.headers["X-CRUID"], b.headers["X-CRUID"], again.headers["X-CRUID"]])


async def test_a_merge_into_a_record_never_submitted_is_422_and_writes_nothing(client, store, facility):
    (subsumed, a), _ = await two_people(client, facility)
    link = [{"type": "replaced-by", "other": {"identifier": {"system": facility, "value": "NEVER-SEEN"}}}]
    resp = await client.put(f"/fhir/Patient/{source_id(a)}", json={**subsumed, "active": False, "link": link})
    assert resp.status == 422
    assert await store.read("Patient", records.source_record_id(facility, "NEVER-SEEN")) is None
    assert records.pos_survivor(await store.read("Patient", source_id(a))) is None


async def test_a_potential_match_decided_while_its_candidate_person_is_emptied_raises_no_open_task(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """One app (no key lock in common: the submission locks its blocking keys, the retraction the record)
    decided a submission a potential match of A's person and is held before its transaction; meanwhile
    it retracts A, the person's only record, closing the Tasks naming that person: none yet. The Task the
    submission raised was then written, open, about a person without records."""
    one, two, arrived, gate = await _replicas(aiohttp_client, aiohttp_server, settings, hapi_url)
    family = unique_surname()
    other = facility.replace("facility-", "hc-")
    a = await one.post("/fhir/Patient", json=patient(facility, "PX1", family=family, phone=unique_phone()))
    a_id, golden_a = source_id(a), a.headers["X-CRUID"]
    late = asyncio.create_task(
        two.post(
            "/fhir/Patient", json=patient(other, "PX2", family=family, phone=None, birth_date="1988-04-12")
        )
    )
    await arrived.wait()
    assert (await two.delete(f"/fhir/Patient/{a_id}")).status == 200
    gate.set()
    answer = await late

    assert answer.status == 201, await answer.text()
    open_tasks = await store.search("Task", {"status": OPEN, "review-candidate": f"Patient/{golden_a}"})
    open_tasks += await store.search("Task", {"status": OPEN, "subject": f"Patient/{golden_a}"})
    assert open_tasks == [], "an open review Task about a person without records"
    await _no_open_tasks_about(store, a_id)


async def test_records_held_as_guards_keep_their_versions(client, store, facility):
    """The survivor of a merge and the person a review Task names are written back unchanged: HAPI keeps
    their versions (no history entry per decision that only depends on them)."""
    (subsumed, a), (_, b) = await two_people(client, facility)
    keep_id = source_id(b)
    before = await store.read("Patient", keep_id)
    assert (await client.put(f"/fhir/Patient/{source_id(a)}", json=merged(subsumed, keep_id))).status == 200
    assert records.version_of(await store.read("Patient", keep_id)) == records.version_of(before)

    family = unique_surname()
    other = facility.replace("facility-", "hc-")
    first = await client.post(
        "/fhir/Patient", json=patient(facility, "V1", family=family, phone=unique_phone())
    )
    golden_before = await store.read("Patient", first.headers["X-CRUID"])
    second = await client.post(
        "/fhir/Patient", json=patient(other, "V2", family=family, phone=None, birth_date="1988-04-12")
    )
    assert second.headers["X-Match-Outcome"] == "potential"
    golden_after = await store.read("Patient", first.headers["X-CRUID"])
    assert records.version_of(golden_after) == records.version_of(golden_before)


async def test_a_delete_held_while_another_replica_merges_the_record_deletes_it_where_it_went(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Replica two decided to delete A (on its own person) and holds its transaction; replica one merges A
    into B (another person). The deletion's If-Match on A's old golden record refuses it; decided again,
    it deletes A from B's person."""
    one, two, arrived, gate = await _replicas(aiohttp_client, aiohttp_server, settings, hapi_url)
    (subsumed, a), (_, b) = await two_people(one, facility)
    a_id, b_id = source_id(a), source_id(b)

    late = asyncio.create_task(two.delete(f"/fhir/Patient/{a_id}"))
    await arrived.wait()
    merge = await one.put(f"/fhir/Patient/{a_id}", json=merged(subsumed, b_id))
    gate.set()
    deletion = await late

    assert merge.status == 200 and merge.headers["X-CRUID"] == b.headers["X-CRUID"]
    assert deletion.status == 200, await deletion.text()
    assert await store.read("Patient", a_id) is None
    golden = await store.assert_consistent(b_id)
    assert records.source_ids_of(golden) == [b_id]
    await _people_consistent(store, [a.headers["X-CRUID"], b.headers["X-CRUID"]])
    await _no_open_tasks_about(store, a_id)
