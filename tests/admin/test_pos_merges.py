"""An admin overrules a POS's merge (IHE PMIR replaced-by) and can undo that: the link state round-trips."""

from __future__ import annotations

from mediator import records
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
    """An admin moves a survivor alone to another person; the record its POS merged into it stays behind,
    still naming it. Deleting the survivor is the 409 naming that record (not a concurrent change retried
    until it gives up), nothing written; once the merged record is gone, the survivor can be deleted."""
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
    await admin.post("/admin/api/move", {"source": survivor, "target": answers[2].headers["X-CRUID"]})
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
