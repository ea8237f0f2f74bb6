"""Possible duplicates (a submission auto-matching two golden records) and what a merge does to the other open
review Tasks of the merged-away golden record (real HAPI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import matching
from mediator import records
from mediator.admin import score_index
from mediator.admin.score_index import SCORE_INDEX
from mediator.context import CONFIG, STORE
from mediator.review import POSSIBLE_DUPLICATE, POTENTIAL_MATCH, review_task, review_task_id
from tests.admin.conftest import Pair, make_pair
from tests.conftest import patient, unique_surname


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


async def _two_goldens_of_one_person(
    app_client, facility: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Two golden records whose source records carry the same demographics (as a bulk load of two facilities
    that never saw each other would leave them), written straight into HAPI."""
    app = app_client.server.app
    cfg = app[CONFIG].current
    family, given = unique_surname(), unique_surname()
    entries, goldens, sources = [], [], []
    for n in (1, 2):
        system = facility.replace("facility-", f"site{n}-")
        resource = patient(system, f"D{n}", family=family, given=given)
        sid = records.source_record_id(system, f"D{n}")
        gid = records.new_golden_id()
        source = records.build_source_record(
            resource, sid, client_id=None, golden_id=gid, block_keys=matching.block_keys(resource, cfg.rules)
        )
        entries += [_put(source), _put(records.with_source(records.new_golden(gid, cfg.cruid_system), sid))]
        goldens.append(gid)
        sources.append(sid)
    await app[STORE].hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    third = patient(facility.replace("facility-", "site3-"), "D3", family=family, given=given)
    return third, goldens, sources


async def _submit_duplicate(app_client, facility: str) -> tuple[dict[str, Any], str, str, str]:
    """(the submission, the golden it was linked to, the other golden, the possible-duplicate Task id)."""
    third, goldens, _ = await _two_goldens_of_one_person(app_client, facility)
    resp = await app_client.post("/fhir/Patient", json=third)
    assert resp.status == 201, await resp.text()
    assert resp.headers["X-Match-Outcome"] == "match"
    linked = resp.headers["X-CRUID"]
    assert linked in goldens
    other = next(g for g in goldens if g != linked)
    return third, linked, other, review_task_id(POSSIBLE_DUPLICATE, linked, other)


async def test_possible_duplicate_then_same_person_merges(admin, app_client, facility, store):
    await app_client.server.app[SCORE_INDEX].install(app_client.server.app[STORE].hapi)
    third, linked, other, task_id = await _submit_duplicate(app_client, facility)
    task = await store.read("Task", task_id)
    assert task is not None and task["status"] == "requested"
    system = third["identifier"][0]["system"]
    listed = await admin.get("/admin/api/queue", kind=POSSIBLE_DUPLICATE, system=system)
    assert [i["task"] for i in listed["items"]] == [task_id]
    view = await admin.get(f"/admin/api/pairs/{task_id}")
    assert {view["left"]["golden"], view["right"]["golden"]} == {linked, other}

    out = await admin.post(
        f"/admin/api/pairs/{task_id}/decision", {"decision": "same-person", "survivor": other}
    )
    assert [records.ref_id(g) for g in out["golden"]] == [other, linked]
    survivor = await store.read("Patient", other)
    assert len(records.source_ids_of(survivor)) == 3
    gone = await store.read("Patient", linked)
    assert gone["active"] is False and records.replaced_by(gone) == other
    assert (await store.read("Task", task_id))["status"] == "completed"
    again = await app_client.post("/fhir/Patient", json=third)
    assert again.status == 200 and again.headers["X-CRUID"] == other


async def test_possible_duplicate_then_different_people_stay_apart(admin, app_client, facility, store):
    third, linked, other, task_id = await _submit_duplicate(app_client, facility)
    await admin.post(f"/admin/api/pairs/{task_id}/decision", {"decision": "different-people"})
    a, b = await store.read("Patient", linked), await store.read("Patient", other)
    assert records.distinct_from(a) == {other} and records.distinct_from(b) == {linked}
    again = await app_client.post("/fhir/Patient", json=third)
    assert again.status == 200 and again.headers["X-CRUID"] == linked
    assert records.source_ids_of(await store.read("Patient", other)) != []
    task = await store.read("Task", task_id)
    assert task["status"] == "completed"  # not reopened by the resubmission
    reverse = await store.read("Task", review_task_id(POSSIBLE_DUPLICATE, other, linked))
    assert reverse is None
    fresh = await app_client.post(
        "/fhir/Patient",
        json=patient(
            facility.replace("facility-", "site4-"),
            "D4",
            family=third["name"][0]["family"],
            given=third["name"][0]["given"][0],
        ),
    )
    assert fresh.headers["X-CRUID"] in {linked, other}
    assert records.distinct_from(await store.read("Patient", linked)) == {other}


@dataclass(frozen=True)
class OtherTasks:
    """A pair (its Task decided as same-person, golden_b merged into golden_a) and four other open Tasks."""

    pair: Pair
    third: str  # a third person's golden record
    third_sid: str
    both: dict[str, Any]  # between the two merged people: closed by the merge
    towards: dict[str, Any]  # candidate is the lost one: closed, raised again for the new pair
    subject: dict[str, Any]  # its golden was lost: same id, retargeted in place
    dup: dict[str, Any]  # possible duplicate whose subject golden is lost: closed, raised again


async def other_tasks(app_client, facility: str, settings) -> OtherTasks:
    hapi = app_client.server.app[STORE].hapi
    await app_client.server.app[SCORE_INDEX].install(hapi)
    pair = await make_pair(app_client, facility)  # Task: source_b (golden_b) vs golden_a
    keep, lose = pair.golden_a, pair.golden_b
    # a third person with one source record
    third_sid = records.source_record_id(facility.replace("facility-", "third-"), "T1")
    third = records.new_golden_id()
    src = records.build_source_record(
        {"identifier": [{"system": "urn:t", "value": third_sid}], "name": [{"family": "T"}]},
        third_sid,
        client_id=None,
        golden_id=third,
        block_keys=[],
    )

    def task(kind: str, source: str, golden: str, other: str) -> dict[str, Any]:
        return review_task(
            kind=kind, source_id=source, golden_id=golden, other_golden_id=other, score=2.0, rule="t"
        )

    out = OtherTasks(
        pair,
        third,
        third_sid,
        both=task(POTENTIAL_MATCH, pair.source_a, keep, lose),
        towards=task(POTENTIAL_MATCH, third_sid, third, lose),
        subject=task(POTENTIAL_MATCH, pair.source_b, lose, third),
        dup=task(POSSIBLE_DUPLICATE, pair.source_b, lose, third),
    )
    entries = [
        _put(src),
        _put(records.with_source(records.new_golden(third, settings.cruid_system), third_sid)),
        *(_put(t) for t in (out.both, out.towards, out.subject, out.dup)),
    ]
    await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return out


async def test_merge_closes_or_retargets_the_other_open_tasks(admin, app_client, facility, store, settings):
    tasks = await other_tasks(app_client, facility, settings)
    pair, third, third_sid = tasks.pair, tasks.third, tasks.third_sid
    both, towards, subject, dup = tasks.both, tasks.towards, tasks.subject, tasks.dup
    keep, lose = pair.golden_a, pair.golden_b
    out = await admin.post(
        f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person", "survivor": keep}
    )
    assert records.ref_id(out["golden"][1]) == lose

    def state(t: dict[str, Any]) -> tuple[str, str | None, str | None]:
        cand = next(i["valueReference"]["reference"] for i in t["input"] if i["type"]["text"] == "candidate")
        return t["status"], records.ref_id(t["for"]["reference"]), records.ref_id(cand)

    closed = await store.read("Task", both["id"])
    assert closed["status"] == "cancelled" and closed["businessStatus"]["text"] == "resolved-by-merge"
    new_towards = review_task_id(POTENTIAL_MATCH, third_sid, keep)
    assert (await store.read("Task", towards["id"]))["status"] == "cancelled"
    assert state(await store.read("Task", new_towards)) == ("requested", third, keep)
    assert state(await store.read("Task", subject["id"])) == ("requested", keep, third)
    new_dup = review_task_id(POSSIBLE_DUPLICATE, keep, third)
    assert (await store.read("Task", dup["id"]))["status"] == "cancelled"
    assert state(await store.read("Task", new_dup)) == ("requested", keep, third)
    # nothing open still names the merged-away golden record
    for params in ({"subject": f"Patient/{lose}"}, {score_index.CANDIDATE: f"Patient/{lose}"}):
        assert await store.search("Task", {**params, "status": "requested"}) == []
    # all of it in the merge's own transaction: its AuditEvent lists every other Task it changed
    events = await store.search("AuditEvent", {"entity": f"Task/{pair.task}"})
    assert len(events) == 1
    named = {e["what"]["reference"] for e in events[0]["entity"]}
    assert {
        f"Task/{i}" for i in (both["id"], towards["id"], subject["id"], dup["id"], new_towards, new_dup)
    } <= named


def review_state(task: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(status, subject golden, candidate golden) of a review Task."""
    cand = next(i["valueReference"]["reference"] for i in task["input"] if i["type"]["text"] == "candidate")
    return task["status"], records.ref_id(task["for"]["reference"]), records.ref_id(cand)


async def assert_followed_the_successor(store: Any, tasks: OtherTasks, keep: str, resolved: str) -> None:
    """The open Tasks of ``tasks`` naming the emptied golden_b follow it to ``keep`` as a merge's do: the
    pair's and ``both`` closed as self-pairs, ``subject`` retargeted in place, the others closed as
    superseded and raised again for the new pair; none open names golden_b any more."""
    pair, lose = tasks.pair, tasks.pair.golden_b
    for closed in (pair.task, tasks.both["id"]):
        task = await store.read("Task", closed)
        assert task["status"] == "cancelled" and task["businessStatus"]["text"] == resolved, closed
    assert review_state(await store.read("Task", tasks.subject["id"])) == ("requested", keep, tasks.third)
    for old, new in (
        (tasks.towards, review_task_id(POTENTIAL_MATCH, tasks.third_sid, keep)),
        (tasks.dup, review_task_id(POSSIBLE_DUPLICATE, keep, tasks.third)),
    ):
        superseded = await store.read("Task", old["id"])
        assert superseded["status"] == "cancelled"
        assert superseded["businessStatus"]["text"] == f"superseded by Task/{new}"
        subject = tasks.third if old is tasks.towards else keep
        other = keep if old is tasks.towards else tasks.third
        assert review_state(await store.read("Task", new)) == ("requested", subject, other)
    for params in ({"subject": f"Patient/{lose}"}, {score_index.CANDIDATE: f"Patient/{lose}"}):
        assert await store.search("Task", {**params, "status": "requested"}) == []


async def test_a_move_emptying_a_person_retargets_or_closes_its_open_tasks_and_undo_reopens_them(
    admin, app_client, facility, store, settings
):
    """golden_b's only record is moved to golden_a: golden_b is golden_a now (replaced-by it), and the
    review Tasks naming it follow as an admin merge's do, in the move's transaction; undo puts them back."""
    tasks = await other_tasks(app_client, facility, settings)
    pair, keep, lose = tasks.pair, tasks.pair.golden_a, tasks.pair.golden_b
    ids = [pair.task, *(t["id"] for t in (tasks.both, tasks.towards, tasks.subject, tasks.dup))]
    before = {i: await store.read("Task", i) for i in ids}

    out = await admin.post("/admin/api/move", {"source": pair.source_b, "target": keep})

    assert records.replaced_by(await store.read("Patient", lose)) == keep
    await assert_followed_the_successor(store, tasks, keep, "resolved-by-move")
    audit = await store.read("AuditEvent", out["auditEvent"].split("/")[1])
    named = {e["what"]["reference"] for e in audit["entity"]}
    new_ids = [
        review_task_id(POTENTIAL_MATCH, tasks.third_sid, keep),
        review_task_id(POSSIBLE_DUPLICATE, keep, tasks.third),
    ]
    assert {f"Task/{i}" for i in [*ids, *new_ids]} <= named

    await admin.post("/admin/api/undo", {"patient": pair.source_b})
    assert (await store.assert_consistent(pair.source_b))["id"] == lose
    for task_id, was in before.items():
        now = await store.read("Task", task_id)
        assert review_state(now) == review_state(was) and now["status"] == "requested", task_id
    for created in new_ids:
        assert (await store.read("Task", created))["status"] == "entered-in-error"
