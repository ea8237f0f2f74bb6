"""Review queue, pair view, decisions and repairs against the real HAPI."""

from __future__ import annotations

import asyncio
import dataclasses

from mediator import records
from mediator.app import create_app
from tests.admin.conftest import AdminClient, make_pair
from tests.conftest import patient
from tests.pairing_proxy import PairingProxy

FHIR = {"Content-Type": "application/fhir+json"}


async def test_queue_lists_the_pair_filtered_by_facility_and_sorted_by_score(admin, pair, facility):
    page = await admin.get("/admin/api/queue", system=pair.system_b)
    assert page["total"] == 1
    item = page["items"][0]
    assert item["task"] == pair.task and item["kind"] == "potential-match"
    assert item["source"]["id"] == pair.source_b and item["candidate"] == pair.golden_a
    assert await admin.get("/admin/api/queue", system=pair.system_a) == {
        "total": 0,
        "page": 1,
        "per_page": 50,
        "kind": "potential-match",
        "items": [],
    }
    everything = await admin.get("/admin/api/queue", per_page="200")
    scores = [i["score"] for i in everything["items"]]
    assert scores == sorted(scores, reverse=True)
    future = await admin.get("/admin/api/queue", system=pair.system_b, since="2999-01-01")
    assert future["total"] == 0


async def test_pair_view_explains_every_field_against_the_thresholds(admin, pair):
    view = await admin.get(f"/admin/api/pairs/{pair.task}")
    assert view["left"]["record"]["id"] == pair.source_b
    assert view["right"]["record"]["id"] == pair.source_a
    thresholds = view["thresholds"]
    assert thresholds["potential_match"] <= view["score"] < thresholds["auto_match"]
    fields = {f["field"]: f for f in view["fields"]}
    assert fields["family"]["agreement"] == "agree"
    assert fields["birth_date"]["agreement"] in {"close", "differ"}
    assert fields["phone"]["agreement"] == "missing"
    assert view["explanation"]["score"] == view["score"]


async def test_same_person_merges_and_the_old_cruid_still_resolves(admin, pair, store, settings):
    out = await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"})
    survivor, loser = (records.ref_id(g) for g in out["golden"])
    assert {survivor, loser} == {pair.golden_a, pair.golden_b}
    for source_id in (pair.source_a, pair.source_b):
        golden = await store.assert_consistent(source_id)
        assert golden["id"] == survivor
        assert records.cruid_of(golden, settings.cruid_system) == survivor
    old = await store.read("Patient", loser)
    assert old["active"] is False and records.replaced_by(old) == survivor
    assert records.source_ids_of(old) == []
    moved = pair.source_b if loser == pair.golden_b else pair.source_a
    assert records.is_manually_linked(await store.read("Patient", moved))
    task = await store.read("Task", pair.task)
    assert task["status"] == "completed"
    assert {o["type"]["text"]: o.get("valueString") for o in task["output"]}["decision"] == "same-person"
    # $ihe-pix with the merged-away CRUID answers the survivor's identifiers
    pix = await admin.client.get(
        "/fhir/Patient/$ihe-pix", params={"sourceIdentifier": f"{settings.cruid_system}|{loser}"}
    )
    assert pix.status == 200
    values = {
        p["valueIdentifier"]["value"]
        for p in (await pix.json(content_type=None))["parameter"]
        if p["name"] == "targetIdentifier"
    }
    assert {"P1", "P2", survivor} <= values
    # the audit trail of the survivor shows who decided and the link state before and after
    history = (await admin.get("/admin/audit", patient=survivor))["events"]
    decision = next(e for e in history if e["action"] == "same-person")
    assert decision["by"] == "alice" and decision["admin"]
    states = {e["what"]: (e["before"], e["after"]) for e in decision["entities"] if "before" in e}
    assert states[f"Patient/{loser}"][1]["replaced_by"] == survivor
    # deciding again: 409
    again = await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"}, 409)
    assert again["resourceType"] == "OperationOutcome" and again["issue"][0]["code"] == "conflict"


async def test_resubmission_after_a_merge_keeps_the_manual_link(admin, app_client, pair):
    await admin.post(
        f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person", "survivor": pair.golden_a}
    )
    again = await app_client.post(
        "/fhir/Patient",
        json=patient(
            pair.system_b, "P2", family=pair.family, given=pair.given, birth_date="1987-05-12", phone=None
        ),
    )
    assert again.status == 200 and again.headers["X-CRUID"] == pair.golden_a


async def test_different_people_are_never_matched_again(admin, app_client, pair, store):
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "different-people"})
    a = await store.read("Patient", pair.golden_a)
    b = await store.read("Patient", pair.golden_b)
    assert records.distinct_from(a) == {pair.golden_b} and records.distinct_from(b) == {pair.golden_a}
    # the submitter now sends data identical to A's: still its own person
    same = patient(pair.system_b, "P2", family=pair.family, given=pair.given)
    resp = await app_client.post("/fhir/Patient", json=same)
    assert resp.status == 200 and resp.headers["X-CRUID"] == pair.golden_b
    assert (await store.read("Task", pair.task))["status"] == "completed"


async def test_two_decisions_on_one_pair_take_turns_before_the_fhir_store(
    aiohttp_client, settings, admin_settings, pair
):
    """Two decisions on the same pair at once (two admins, or one clicking twice): the key locks let one
    decide while the other waits, and the other is then answered 409 from what the first wrote. Checked
    through a proxy that holds a HAPI transaction until a second one is pending: only one transaction is
    sent (without the locks both decisions sent theirs together, and on H2 both could fail with 503)."""
    with PairingProxy(settings.hapi_base_url, hold_s=1.0) as proxy:
        app = create_app(dataclasses.replace(settings, hapi_base_url=proxy.url))
        one = await AdminClient(await aiohttp_client(app)).login()
        proxy.reset()
        url = f"/admin/api/pairs/{pair.task}/decision"
        a, b = await asyncio.gather(
            one.client.post(url, json={"decision": "same-person"}, headers={"X-CSRF-Token": one.csrf}),
            one.client.post(url, json={"decision": "different-people"}, headers={"X-CSRF-Token": one.csrf}),
        )
        assert sorted([a.status, b.status]) == [200, 409], [await a.text(), await b.text()]
        assert proxy.stats.transactions == 1 and proxy.stats.pairs == 0, proxy.stats


async def test_two_admins_deciding_the_same_pair_one_wins(admin, second_admin, pair, store):
    url = f"/admin/api/pairs/{pair.task}/decision"
    a, b = await asyncio.gather(
        admin.client.post(url, json={"decision": "same-person"}, headers={"X-CSRF-Token": admin.csrf}),
        second_admin.client.post(
            url, json={"decision": "different-people"}, headers={"X-CSRF-Token": second_admin.csrf}
        ),
    )
    assert sorted([a.status, b.status]) == [200, 409]
    loser = a if a.status == 409 else b
    assert (await loser.json(content_type=None))["resourceType"] == "OperationOutcome"
    task = await store.read("Task", pair.task)
    decided = {o["type"]["text"]: o.get("valueString") for o in task["output"]}
    winner_decision = "same-person" if a.status == 200 else "different-people"
    assert decided["decision"] == winner_decision
    events = await store.search("AuditEvent", {"entity": f"Task/{pair.task}"})
    assert len(events) == 1  # the loser wrote nothing
    for source_id in (pair.source_a, pair.source_b):
        await store.assert_consistent(source_id)


async def test_break_move_and_undo(admin, app_client, facility, store, settings):
    # two facilities, one person (auto-matched), then split, moved back, and undone
    pair = await make_pair(app_client, facility)
    third = facility.replace("facility-", "ward-")
    c = await app_client.post(
        "/fhir/Patient", json=patient(third, "P3", family=pair.family, given=pair.given)
    )
    assert c.headers["X-Match-Outcome"] == "match" and c.headers["X-CRUID"] == pair.golden_a
    source_c = (await c.json())["id"]

    broken = await admin.post(f"/admin/api/golden/{pair.golden_a}/break", {"source": source_c})
    new_golden = records.ref_id(broken["golden"][1])
    assert new_golden not in (pair.golden_a, pair.golden_b)
    fresh = await store.assert_consistent(source_c)
    assert fresh["id"] == new_golden and records.cruid_of(fresh, settings.cruid_system) == new_golden
    assert records.distinct_from(fresh) == {pair.golden_a}
    assert source_c not in records.source_ids_of(await store.read("Patient", pair.golden_a))
    # the registry never moves it back on resubmission
    again = await app_client.post(
        "/fhir/Patient", json=patient(third, "P3", family=pair.family, given=pair.given)
    )
    assert again.headers["X-CRUID"] == new_golden

    moved = await admin.post("/admin/api/move", {"source": source_c, "target": pair.golden_b})
    assert [records.ref_id(g) for g in moved["golden"]] == [new_golden, pair.golden_b]
    assert (await store.assert_consistent(source_c))["id"] == pair.golden_b
    emptied = await store.read("Patient", new_golden)
    assert emptied["active"] is False
    # its last record went to golden_b: its CRUID leads there, for a POS that kept it
    assert records.replaced_by(emptied) == pair.golden_b
    lookup = f"/fhir/Patient/$ihe-pix?sourceIdentifier={settings.cruid_system}|{new_golden}"
    answer = await (await app_client.get(lookup)).json(content_type=None)
    assert {"reference": f"Patient/{pair.golden_b}"} in [p.get("valueReference") for p in answer["parameter"]]

    await admin.post("/admin/api/undo", {"patient": source_c})  # undoes the move
    assert (await store.assert_consistent(source_c))["id"] == new_golden
    await admin.post("/admin/api/undo", {"patient": source_c})  # undoes the break
    restored = await store.assert_consistent(source_c)
    assert restored["id"] == pair.golden_a
    assert records.distinct_from(restored) == set()
    assert not records.is_manually_linked(await store.read("Patient", source_c))
    assert (await store.read("Patient", new_golden))["active"] is False
    nothing = await admin.post("/admin/api/undo", {"patient": source_c}, 404)
    assert nothing["resourceType"] == "OperationOutcome"


async def test_undo_of_a_merge_reopens_the_task(admin, pair, store):
    out = await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"})
    survivor = records.ref_id(out["golden"][0])
    await admin.post("/admin/api/undo", {"patient": survivor})
    assert (await store.assert_consistent(pair.source_a))["id"] == pair.golden_a
    assert (await store.assert_consistent(pair.source_b))["id"] == pair.golden_b
    assert (await store.read("Task", pair.task))["status"] == "requested"
    page = await admin.get("/admin/api/queue", system=pair.system_b)
    assert page["total"] == 1


async def test_undo_refuses_when_records_changed_since(admin, pair, app_client):
    out = await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"})
    survivor = records.ref_id(out["golden"][0])
    other = pair.system_a.replace("facility-", "lab-")
    extra = await app_client.post(
        "/fhir/Patient", json=patient(other, "P9", family=pair.family, given=pair.given)
    )
    assert extra.headers["X-CRUID"] == survivor  # a new source joined the survivor since the merge
    refused = await admin.post("/admin/api/undo", {"patient": survivor}, 409)
    assert refused["issue"][0]["code"] == "conflict"


async def test_new_auto_matches_can_be_confirmed(admin, app_client, facility, store):
    from tests.conftest import unique_surname

    family = unique_surname()
    await app_client.post("/fhir/Patient", json=patient(facility, "M1", family=family))
    other = facility.replace("facility-", "clinic-")
    b = await app_client.post("/fhir/Patient", json=patient(other, "M2", family=family))
    assert b.headers["X-Match-Outcome"] == "match"
    source_b = (await b.json())["id"]
    listed = (await admin.get("/admin/api/auto-matches", limit="200"))["items"]
    assert source_b in [i["source"]["id"] for i in listed]
    await admin.post("/admin/api/confirm", {"source": source_b})
    assert records.is_manually_linked(await store.read("Patient", source_b))
    listed = (await admin.get("/admin/api/auto-matches", limit="200"))["items"]
    assert source_b not in [i["source"]["id"] for i in listed]


async def test_search_and_golden_view(admin, pair, settings):
    by_id = (await admin.get("/admin/api/search", identifier=f"{pair.system_a}|P1"))["items"]
    assert [i["golden"] for i in by_id] == [pair.golden_a]
    by_name = (await admin.get("/admin/api/search", name=pair.family))["items"]
    assert {i["golden"] for i in by_name} == {pair.golden_a, pair.golden_b}
    by_cruid = (await admin.get("/admin/api/search", identifier=pair.golden_b))["items"]
    assert [i["golden"] for i in by_cruid] == [pair.golden_b]
    view = await admin.get(f"/admin/api/golden/{pair.golden_a}")
    assert view["cruid"] == pair.golden_a and [s["id"] for s in view["sources"]] == [pair.source_a]
    assert view["history"][0]["decision"] in {"no_match", "match"}
    bad = await admin.client.get("/admin/api/search")
    assert bad.status == 400
