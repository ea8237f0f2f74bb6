"""An admin overrules a POS's merge (IHE PMIR replaced-by) and can undo that: the link state round-trips."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from typing import Any

import aiohttp
import yaml

from mediator import records
from mediator.admin.jobs import JOBS
from mediator.context import STORE
from mediator.settings import REPO_ROOT
from tests.admin.conftest import make_pair
from tests.admin.test_duplicates import _put
from tests.conftest import patient, unique_surname


async def test_an_admin_move_overrules_a_pos_merge_and_its_undo_restores_it(
    admin, app_client, facility, store
):
    people = [
        patient(facility, f"P{i}", family=unique_surname(), given=given, birth_date=born)
        for i, (given, born) in enumerate(
            [("Amina", "1987-04-12"), ("Halima", "1990-01-02"), ("Neema", "1970-03-03")]
        )
    ]
    answers = [await app_client.post("/fhir/Patient", json=p) for p in people]
    assert len({a.headers["X-CRUID"] for a in answers}) == 3
    subsumed, survivor = (records.source_record_id(facility, f"P{i}") for i in (0, 1))
    third_golden = answers[2].headers["X-CRUID"]
    link = [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor}"}}]
    merged = await app_client.put(
        f"/fhir/Patient/{subsumed}", json={**people[0], "active": False, "link": link}
    )
    assert merged.status == 200 and merged.headers["X-CRUID"] == answers[1].headers["X-CRUID"]
    # the person page says who linked it: its POS's merge, not an admin's manual link
    person = await admin.get(f"/admin/api/golden/{answers[1].headers['X-CRUID']}")
    (shown,) = [s for s in person["sources"] if s["id"] == subsumed]
    assert shown["mergedInto"] == survivor and shown["manual"] is False
    page = await (await admin.client.get(f"/admin/person/{answers[1].headers['X-CRUID']}")).text()
    assert f"merged by its POS</strong> into {survivor}" in page

    await admin.post("/admin/api/move", {"source": subsumed, "target": third_golden})
    moved = await store.read("Patient", subsumed)
    assert records.golden_id_of(moved) == third_golden
    assert records.link_decision(moved) == records.MANUAL and records.pos_survivor(moved) is None
    again = await app_client.put(f"/fhir/Patient/{subsumed}", json={**people[0], "active": False})
    assert again.headers["X-CRUID"] == third_golden, "the admin's link stays; the record no longer follows"

    await admin.post("/admin/api/undo", {"patient": subsumed})
    restored = await store.read("Patient", subsumed)
    assert records.golden_id_of(restored) == answers[1].headers["X-CRUID"]
    assert records.link_decision(restored) == records.POS_MERGE and records.pos_survivor(restored) == survivor


async def test_a_survivor_an_admin_moved_away_from_its_merged_record_is_still_refused_deletion(
    admin, app_client, facility, store
):
    """A survivor moved alone to another person, as an admin move did before the records merged into it
    went along (written straight into HAPI here): the record its POS merged into it stayed behind, still
    naming it. Deleting the survivor is the 409 naming that record (not a concurrent change retried until
    it gives up), nothing written; once the merged record is gone, the survivor can be deleted."""
    people = [
        patient(facility, f"M{i}", family=unique_surname(), given=given, birth_date=born)
        for i, (given, born) in enumerate(
            [("Amina", "1987-04-12"), ("Halima", "1990-01-02"), ("Neema", "1970-03-03")]
        )
    ]
    answers = [await app_client.post("/fhir/Patient", json=p) for p in people]
    subsumed, survivor = (records.source_record_id(facility, f"M{i}") for i in (0, 1))
    link = [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor}"}}]
    merge = await app_client.put(
        f"/fhir/Patient/{subsumed}", json={**people[0], "active": False, "link": link}
    )
    assert merge.status == 200
    old_golden, target = [await store.read("Patient", answers[i].headers["X-CRUID"]) for i in (1, 2)]
    moved_alone = [
        records.with_link_state(
            await store.read("Patient", survivor), {"kind": "source", "golden": target["id"], "manual": True}
        ),
        records.without_source(old_golden, survivor, moved_to=target["id"]),
        records.with_source(target, survivor),
    ]
    await app_client.server.app[STORE].hapi.transaction(
        {"resourceType": "Bundle", "type": "transaction", "entry": [_put(r) for r in moved_alone]}
    )
    assert records.golden_id_of(await store.read("Patient", subsumed)) == answers[1].headers["X-CRUID"]
    survivor_before = await store.read("Patient", survivor)

    refused = await app_client.delete(f"/fhir/Patient/{survivor}")

    assert refused.status == 409, await refused.text()
    diagnostics = (await refused.json(content_type=None))["issue"][0]["diagnostics"]
    assert f"Patient/{subsumed}" in diagnostics and "Concurrent change" not in diagnostics
    assert await store.read("Patient", survivor) == survivor_before
    assert (await app_client.delete(f"/fhir/Patient/{subsumed}")).status == 200
    assert (await app_client.delete(f"/fhir/Patient/{survivor}")).status == 200
    golden = await store.read("Patient", answers[2].headers["X-CRUID"])
    assert records.source_ids_of(golden) == [records.source_record_id(facility, "M2")]


async def test_a_bulk_upload_decides_a_merge_row_after_the_rows_of_its_survivor(
    admin, app_client, facility, store
):
    """NDJSON rows merging a record into one an earlier row submits: the bulk planner groups rows by
    blocking key, and rows sharing frequent keys (here the merged rows: one given name and birth date) went
    first, so a merge was decided before its survivor existed and refused as naming an unknown survivor.
    A merge row now waits for the earlier rows of its survivor; a merge into a record that was itself
    merged, into one never submitted, or back into its own merged record is still that row's error."""
    born = {"S1": "1990-01-02", "S2": "1970-03-03", "S3": "1979-09-09", "E": "1965-05-05", "F": "1955-06-06"}
    people = {
        key: patient(facility, key, family=unique_surname(), given=f"Given{key}", birth_date=day)
        for key, day in born.items()
    }
    people.update({f"M{i}": patient(facility, f"M{i}", family=unique_surname()) for i in (1, 2, 3)})

    def into(key: str, survivor: str) -> dict[str, Any]:
        link = {"identifier": {"system": facility, "value": survivor}}
        return {**people[key], "active": False, "link": [{"type": "replaced-by", "other": link}]}

    rows = [
        *(row for i in (1, 2, 3) for row in (people[f"S{i}"], into(f"M{i}", f"S{i}"))),
        into("S3", "M1"),  # 7: M1 was itself merged (into S1): refused
        into("E", "NEVER"),  # 8: never submitted: refused
        people["E"],
        people["F"],
        into("E", "F"),  # 11
        into("F", "E"),  # 12: back into its own merged record: refused
    ]
    form = aiohttp.FormData()
    form.add_field("system", facility)
    text = "\n".join(json.dumps(r) for r in rows)
    form.add_field("file", text.encode(), filename="merges.ndjson", content_type="application/x-ndjson")
    resp = await admin.client.post("/admin/jobs/bulk", data=form, headers={"X-CSRF-Token": admin.csrf})
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]
    task = admin.client.app[JOBS].tasks.get(job_id)
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), 120)
    report = await (await admin.client.get(f"/admin/jobs/{job_id}/report.csv")).text()
    by_row = {int(r["row"]): r for r in csv.DictReader(io.StringIO(report))}

    assert [by_row[n]["outcome"] for n in (2, 4, 6, 11)] == ["pos-merge"] * 4, by_row
    assert all(by_row[n]["error"] for n in (7, 8, 12)), by_row
    ids = {key: records.source_record_id(facility, key) for key in people}
    stored = {key: await store.read("Patient", sid) for key, sid in ids.items()}
    for i in (1, 2, 3):
        assert records.pos_survivor(stored[f"M{i}"]) == ids[f"S{i}"]
        assert records.golden_id_of(stored[f"M{i}"]) == records.golden_id_of(stored[f"S{i}"])
    assert records.pos_survivor(stored["S3"]) is None and records.pos_survivor(stored["F"]) is None
    assert records.pos_survivor(stored["E"]) == ids["F"]
    for sid in ids.values():
        await store.assert_consistent(sid)


async def test_a_rematch_after_merges_and_a_deletion_keeps_merged_records_with_their_survivor(
    admin, app_client, facility, store
):
    """Stricter rules split a person: its survivor leaves with the record its POS merged into it, and the
    record its POS retracted stays deleted (the apply re-submits stored records only)."""
    family = unique_surname()
    same = [patient(facility, key, family=family) for key in ("S", "T", "D")]
    other = patient(facility, "F", family=unique_surname(), given="Halima", birth_date="1990-01-02")
    answers = [await app_client.post("/fhir/Patient", json=p) for p in (*same, other)]
    assert len({a.headers["X-CRUID"] for a in answers[:3]}) == 1
    ids = {key: records.source_record_id(facility, key) for key in ("S", "T", "D", "F")}
    link = [{"type": "replaced-by", "other": {"reference": f"Patient/{ids['S']}"}}]
    assert (await app_client.put(f"/fhir/Patient/{ids['F']}", json={**other, "link": link})).status == 200
    assert (await app_client.delete(f"/fhir/Patient/{ids['D']}")).status == 200

    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": 99.0, "potential_match": 98.0}
    doc["deterministic"] = []
    apply = await admin.post("/admin/jobs/rematch/apply", {"rules": doc, "systems": [facility]}, status=202)
    task = admin.client.app[JOBS].tasks.get(apply["id"])
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), 120)
    progress = await admin.get(f"/admin/jobs/{apply['id']}")
    assert progress["status"] == "finished" and progress["changed"] >= 1, progress

    assert await store.read("Patient", ids["D"]) is None, "a retracted record is not re-created"
    stored = {key: await store.read("Patient", ids[key]) for key in ("S", "T", "F")}
    assert records.golden_id_of(stored["S"]) != records.golden_id_of(stored["T"]), "split"
    assert records.golden_id_of(stored["F"]) == records.golden_id_of(stored["S"]), "followed its survivor"
    assert records.pos_survivor(stored["F"]) == ids["S"]
    for key in ("S", "T", "F"):
        await store.assert_consistent(ids[key])
    first = await store.read("Patient", answers[0].headers["X-CRUID"])
    assert ids["D"] not in records.source_ids_of(first)


async def _merged_person(app_client: Any, facility: str, *, with_other: bool) -> tuple[Any, ...]:
    """A person of a survivor S, the record F its POS merged into S and (``with_other``) a record W of
    another facility matching S; and a person T of its own. (S, F, W or None, S's golden, T's golden)."""
    family = unique_surname()
    keep = patient(facility, "S", family=family, given="Halima", birth_date="1990-01-02")
    old = patient(facility, "F", family=unique_surname())
    answers = [
        await app_client.post("/fhir/Patient", json=p)
        for p in (keep, old, patient(facility, "T", family=unique_surname(), given="Neema"))
    ]
    assert len({a.headers["X-CRUID"] for a in answers}) == 3
    survivor, follower = records.source_record_id(facility, "S"), records.source_record_id(facility, "F")
    link = [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor}"}}]
    merge = await app_client.put(f"/fhir/Patient/{follower}", json={**old, "active": False, "link": link})
    assert merge.headers["X-CRUID"] == answers[0].headers["X-CRUID"]
    other = None
    if with_other:
        ward = facility.replace("facility-", "ward-")
        w = await app_client.post(
            "/fhir/Patient", json=patient(ward, "W", family=family, given="Halima", birth_date="1990-01-02")
        )
        assert w.headers["X-Match-Outcome"] == "match"
        assert w.headers["X-CRUID"] == answers[0].headers["X-CRUID"]
        other = records.source_record_id(ward, "W")
    return survivor, follower, other, answers[0].headers["X-CRUID"], answers[2].headers["X-CRUID"]


def _pix_cruids(answer: dict[str, Any]) -> set[str]:
    return {
        p["valueIdentifier"]["value"]
        for p in answer["parameter"]
        if p["name"] == "targetIdentifier" and p["valueIdentifier"]["value"].startswith("cr-")
    }


async def test_an_admin_move_of_a_survivor_takes_its_merged_record_along_and_undo_restores_both(
    admin, app_client, facility, store
):
    """The record its POS merged into the survivor goes with it, keeps the POS's merge (the person page
    says so), is named in the move's AuditEvent, and a lookup of its identifier answers the survivor's
    person; undo puts both back. The other record of the old person stays there."""
    survivor, follower, other, old_golden, target = await _merged_person(
        app_client, facility, with_other=True
    )

    out = await admin.post("/admin/api/move", {"source": survivor, "target": target})

    assert [records.ref_id(g) for g in out["golden"]] == [old_golden, target]
    moved = await store.read("Patient", follower)
    assert records.golden_id_of(moved) == target
    assert records.link_decision(moved) == records.POS_MERGE and records.pos_survivor(moved) == survivor
    assert records.link_decision(await store.read("Patient", survivor)) == records.MANUAL
    golden = await store.assert_consistent(follower)
    assert golden["id"] == target and survivor in records.source_ids_of(golden)
    left = await store.assert_consistent(other)
    assert left["id"] == old_golden and records.source_ids_of(left) == [other]
    pix = await app_client.get("/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{facility}|F"})
    assert _pix_cruids(await pix.json(content_type=None)) == {target}
    person = await admin.get(f"/admin/api/golden/{target}")
    (shown,) = [s for s in person["sources"] if s["id"] == follower]
    assert shown["mergedInto"] == survivor and shown["manual"] is False
    page = await (await admin.client.get(f"/admin/person/{target}")).text()
    assert f"merged by its POS</strong> into {survivor}" in page
    audit = await store.read("AuditEvent", out["auditEvent"].split("/")[1])
    assert f"Patient/{follower}" in {e["what"]["reference"] for e in audit["entity"]}

    await admin.post("/admin/api/undo", {"patient": survivor})
    restored = await store.read("Patient", follower)
    assert records.golden_id_of(restored) == old_golden and records.pos_survivor(restored) == survivor
    back = await store.assert_consistent(survivor)
    assert back["id"] == old_golden and set(records.source_ids_of(back)) == {survivor, follower, other}
    assert records.source_ids_of(await store.read("Patient", target)) == [
        records.source_record_id(facility, "T")
    ]


async def test_an_admin_move_of_a_survivor_with_only_its_merged_records_left_empties_the_old_person(
    admin, app_client, facility, store
):
    survivor, follower, _, old_golden, target = await _merged_person(app_client, facility, with_other=False)

    await admin.post("/admin/api/move", {"source": survivor, "target": target})

    assert (await store.assert_consistent(follower))["id"] == target
    emptied = await store.read("Patient", old_golden)
    assert emptied["active"] is False and records.source_ids_of(emptied) == []
    assert records.replaced_by(emptied) == target, "its CRUID leads to where its records went"


async def test_a_break_of_a_survivor_takes_its_merged_record_to_the_new_person(
    admin, app_client, facility, store
):
    survivor, follower, other, old_golden, _ = await _merged_person(app_client, facility, with_other=True)

    out = await admin.post(f"/admin/api/golden/{old_golden}/break", {"source": survivor})

    new_golden = records.ref_id(out["golden"][1])
    fresh = await store.assert_consistent(follower)
    assert fresh["id"] == new_golden and set(records.source_ids_of(fresh)) == {survivor, follower}
    assert records.pos_survivor(await store.read("Patient", follower)) == survivor
    left = await store.assert_consistent(other)
    assert left["id"] == old_golden and records.source_ids_of(left) == [other]
    assert records.distinct_from(fresh) == {old_golden} and records.distinct_from(left) == {new_golden}

    await admin.post("/admin/api/undo", {"patient": follower})
    back = await store.assert_consistent(follower)
    assert back["id"] == old_golden and set(records.source_ids_of(back)) == {survivor, follower, other}
    assert records.pos_survivor(await store.read("Patient", follower)) == survivor


async def test_a_break_of_a_survivor_whose_only_other_records_are_merged_into_it_is_refused(
    admin, app_client, facility, store
):
    """They would go with it: the new person would be the old one under a new CRUID, the old one emptied.
    400, nothing written."""
    survivor, follower, _, old_golden, _ = await _merged_person(app_client, facility, with_other=False)
    before = [await store.read("Patient", rid) for rid in (old_golden, survivor, follower)]

    refused = await admin.post(f"/admin/api/golden/{old_golden}/break", {"source": survivor}, 400)

    assert "merged into it" in refused["issue"][0]["diagnostics"]
    assert [await store.read("Patient", rid) for rid in (old_golden, survivor, follower)] == before


async def test_an_admin_move_of_a_survivor_takes_the_records_merged_into_its_merged_ones_too(
    admin, app_client, facility, store
):
    """Z was merged into F, then F into S: moving S takes F and Z along (Z follows F, which follows S)."""
    born = {"S": "1990-01-02", "F": "1987-04-12", "Z": "1955-05-05", "T": "1970-03-03"}
    people = {
        key: patient(facility, key, family=unique_surname(), given=f"Given{key}", birth_date=day)
        for key, day in born.items()
    }
    answers = {key: await app_client.post("/fhir/Patient", json=p) for key, p in people.items()}
    assert len({a.headers["X-CRUID"] for a in answers.values()}) == 4
    ids = {key: records.source_record_id(facility, key) for key in people}
    for subsumed, into in (("Z", "F"), ("F", "S")):
        link = [{"type": "replaced-by", "other": {"reference": f"Patient/{ids[into]}"}}]
        body = {**people[subsumed], "active": False, "link": link}
        assert (await app_client.put(f"/fhir/Patient/{ids[subsumed]}", json=body)).status == 200
    target = answers["T"].headers["X-CRUID"]

    await admin.post("/admin/api/move", {"source": ids["S"], "target": target})

    golden = await store.assert_consistent(ids["S"])
    assert golden["id"] == target and {ids["F"], ids["Z"]} <= set(records.source_ids_of(golden))
    assert records.pos_survivor(await store.read("Patient", ids["Z"])) == ids["F"]
    assert records.pos_survivor(await store.read("Patient", ids["F"])) == ids["S"]
    assert records.source_ids_of(await store.read("Patient", answers["S"].headers["X-CRUID"])) == []


async def test_an_admin_merge_of_two_people_keeps_the_pos_merges_among_their_records(
    admin, app_client, facility, store
):
    """Merging the person of a survivor and its merged record into another person does not overrule the
    POS: the merged record keeps its merge (before, it became a manual link), so a later move of the
    survivor still takes it along."""
    pair = await make_pair(app_client, facility)
    merged_patient = {
        **patient(facility, "Z", family=unique_surname(), given="Zawadi", birth_date="1960-06-06"),
        "active": False,
        "link": [{"type": "replaced-by", "other": {"reference": f"Patient/{pair.source_a}"}}],
    }
    zid = records.source_record_id(facility, "Z")
    answer = await app_client.post("/fhir/Patient", json=merged_patient)
    assert answer.status == 201 and answer.headers["X-CRUID"] == pair.golden_a

    await admin.post(
        f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person", "survivor": pair.golden_b}
    )

    follower = await store.read("Patient", zid)
    assert records.golden_id_of(follower) == pair.golden_b
    assert records.link_decision(follower) == records.POS_MERGE
    assert records.pos_survivor(follower) == pair.source_a
    assert records.link_decision(await store.read("Patient", pair.source_a)) == records.MANUAL

    third = await app_client.post(
        "/fhir/Patient",
        json=patient(facility, "T", family=unique_surname(), given="Neema", birth_date="1970-03-03"),
    )
    await admin.post("/admin/api/move", {"source": pair.source_a, "target": third.headers["X-CRUID"]})
    assert (await store.assert_consistent(zid))["id"] == third.headers["X-CRUID"]
