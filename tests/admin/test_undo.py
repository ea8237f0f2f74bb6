"""Undo puts the review queue back as it was: the decided Task and every Task the decision closed,
retargeted or created — in the undo's one transaction, refused (409, nothing written) if any of them
changed since (real HAPI)."""

from __future__ import annotations

from typing import Any, NamedTuple

from mediator import records
from mediator.admin import score_index
from mediator.context import STORE
from mediator.review import POSSIBLE_DUPLICATE, POTENTIAL_MATCH, review_task_id
from tests.admin.test_duplicates import _put, other_tasks
from tests.conftest import patient, unique_surname

VOLATILE = ("meta", "output", "lastModified")  # HAPI's versions; the undo's audit link on the decided Task


def body(task: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k not in VOLATILE}


def queue_ids(page: dict[str, Any]) -> set[str]:
    return {i["task"] for i in page["items"]}


async def test_undo_of_a_merge_puts_every_task_back(admin, app_client, facility, store, settings):
    tasks = await other_tasks(app_client, facility, settings)
    pair, keep, lose = tasks.pair, tasks.pair.golden_a, tasks.pair.golden_b
    ids = [pair.task, *(t["id"] for t in (tasks.both, tasks.towards, tasks.subject, tasks.dup))]
    before = {i: await store.read("Task", i) for i in ids}
    queue_before = await admin.get("/admin/api/queue", system=pair.system_b)
    assert pair.task in queue_ids(queue_before)
    new_towards = review_task_id(POTENTIAL_MATCH, tasks.third_sid, keep)
    new_dup = review_task_id(POSSIBLE_DUPLICATE, keep, tasks.third)

    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person", "survivor": keep})
    assert (await store.read("Task", new_towards))["status"] == "requested"
    assert pair.task not in queue_ids(await admin.get("/admin/api/queue", system=pair.system_b))

    out = await admin.post("/admin/api/undo", {"patient": keep})
    assert out["task"] == f"Task/{pair.task}"
    assert (await store.assert_consistent(pair.source_a))["id"] == keep
    assert (await store.assert_consistent(pair.source_b))["id"] == lose
    for task_id, was in before.items():  # open again, same subject, focus, candidate, score; no decision
        now = await store.read("Task", task_id)
        assert body(now) == body(was), task_id
        assert now["status"] == "requested" and "businessStatus" not in now
    # the decided Task names the undo; the others carry no decision output
    decided = await store.read("Task", pair.task)
    assert [o["type"]["text"] for o in decided["output"]] == ["audit-event"]
    for other in (tasks.both, tasks.towards, tasks.subject, tasks.dup):
        assert "output" not in await store.read("Task", other["id"])
    # the Tasks the merge raised for the new pairs are withdrawn, out of the queue
    for created in (new_towards, new_dup):
        withdrawn = await store.read("Task", created)
        assert withdrawn["status"] == "entered-in-error" and withdrawn["businessStatus"]["text"] == "undone"
    queue_after = await admin.get("/admin/api/queue", system=pair.system_b)
    assert queue_ids(queue_after) == queue_ids(queue_before) and queue_after["total"] == queue_before["total"]
    assert await store.search("Task", {"subject": f"Patient/{keep}", "status": "requested"}) != []
    open_on_lose = await store.search(
        "Task", {score_index.CANDIDATE: f"Patient/{lose}", "status": "requested"}
    )
    assert {t["id"] for t in open_on_lose} == {tasks.both["id"], tasks.towards["id"]}
    # the undo's AuditEvent names every Task it put back
    undo_event = await store.read("AuditEvent", out["auditEvent"].split("/")[1])
    named = {e["what"]["reference"] for e in undo_event["entity"]}
    assert {f"Task/{i}" for i in [*ids, new_towards, new_dup]} <= named

    # the same merge again: the withdrawn Tasks are raised again for the new pairs
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person", "survivor": keep})
    assert (await store.read("Task", new_towards))["status"] == "requested"
    assert (await store.read("Task", new_dup))["status"] == "requested"
    assert (await store.read("Task", tasks.subject["id"]))["for"]["reference"] == f"Patient/{keep}"


async def test_undo_refuses_when_a_task_changed_since_and_writes_nothing(
    admin, app_client, facility, store, settings
):
    tasks = await other_tasks(app_client, facility, settings)
    pair, keep, lose = tasks.pair, tasks.pair.golden_a, tasks.pair.golden_b
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person", "survivor": keep})
    # meanwhile someone closes the Task the merge retargeted (no Patient changes)
    retargeted = await store.read("Task", tasks.subject["id"])
    retargeted["status"] = "cancelled"
    hapi = app_client.server.app[STORE].hapi
    await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [_put(retargeted)]})
    ids = [pair.task, *(t["id"] for t in (tasks.both, tasks.towards, tasks.subject, tasks.dup))]
    versions = {i: (await store.read("Task", i))["meta"]["versionId"] for i in ids}
    patients = {
        p: (await store.read("Patient", p))["meta"]["versionId"]
        for p in (keep, lose, pair.source_a, pair.source_b)
    }

    refused = await admin.post("/admin/api/undo", {"patient": keep}, 409)
    assert refused["resourceType"] == "OperationOutcome" and refused["issue"][0]["code"] == "conflict"
    assert f"Task/{tasks.subject['id']}" in refused["issue"][0]["diagnostics"]
    assert {i: (await store.read("Task", i))["meta"]["versionId"] for i in ids} == versions
    assert {p: (await store.read("Patient", p))["meta"]["versionId"] for p in patients} == patients
    assert records.replaced_by(await store.read("Patient", lose)) == keep
    events = await store.search("AuditEvent", {"entity": f"Task/{pair.task}"})
    assert len(events) == 1  # the merge's; no undo was recorded


async def test_undo_of_different_people_reopens_the_task_or_refuses_if_it_changed(
    admin, pair, store, app_client
):
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "different-people"})
    await admin.post("/admin/api/undo", {"patient": pair.golden_a})
    reopened = await store.read("Task", pair.task)
    assert reopened["status"] == "requested" and "businessStatus" not in reopened
    assert records.distinct_from(await store.read("Patient", pair.golden_a)) == set()
    assert pair.task in queue_ids(await admin.get("/admin/api/queue", system=pair.system_b))

    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "different-people"})
    decided = await store.read("Task", pair.task)
    decided["status"] = "requested"  # reopened by hand meanwhile
    hapi = app_client.server.app[STORE].hapi
    await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": [_put(decided)]})
    refused = await admin.post("/admin/api/undo", {"patient": pair.golden_a}, 409)
    assert refused["issue"][0]["code"] == "conflict"
    assert records.distinct_from(await store.read("Patient", pair.golden_a)) == {pair.golden_b}


class Moved(NamedTuple):
    source: str
    second: str  # golden records it was moved to
    third: str
    earlier: str  # the moves' AuditEvent ids
    last: str


async def _twice_moved(app_client: Any, admin: Any, facility: str) -> Moved:
    """A record moved by alice from its own person to a second, then to a third."""
    answers = [
        await app_client.post(
            "/fhir/Patient",
            json=patient(facility, key, family=unique_surname(), given=given, birth_date=born),
        )
        for key, given, born in (
            ("U1", "Amina", "1987-04-12"),
            ("U2", "Halima", "1990-01-02"),
            ("U3", "Neema", "1970-03-03"),
        )
    ]
    source = records.source_record_id(facility, "U1")
    second, third = (a.headers["X-CRUID"] for a in answers[1:])
    moves = [await admin.post("/admin/api/move", {"source": source, "target": t}) for t in (second, third)]
    earlier, last = (m["auditEvent"].split("/", 1)[1] for m in moves)
    return Moved(source, second, third, earlier, last)


async def test_an_undo_retried_after_a_lost_answer_is_answered_the_same_and_undoes_nothing_more(
    admin, second_admin, app_client, facility, store
):
    """The undo names the decision it undoes. Retried (its answer lost after HAPI wrote it), it gets the
    first answer and nothing is written: before, the retry undid the decision before it too."""
    m = await _twice_moved(app_client, admin, facility)

    first = await admin.post("/admin/api/undo", {"patient": m.source, "decision": f"AuditEvent/{m.last}"})
    assert records.golden_id_of(await store.read("Patient", m.source)) == m.second
    version = (await store.read("Patient", m.source))["meta"]["versionId"]

    again = await admin.post("/admin/api/undo", {"patient": m.source, "decision": f"AuditEvent/{m.last}"})

    assert again == first
    stored = await store.read("Patient", m.source)
    assert records.golden_id_of(stored) == m.second and stored["meta"]["versionId"] == version
    # another admin with the same stale view is told, not answered as if they had done it
    refused = await second_admin.post("/admin/api/undo", {"patient": m.source, "decision": m.last}, 409)
    assert "undone by alice" in refused["issue"][0]["diagnostics"]


async def test_an_undo_of_a_decision_that_is_no_longer_the_last_is_refused(
    admin, app_client, facility, store
):
    m = await _twice_moved(app_client, admin, facility)
    await admin.post("/admin/api/undo", {"patient": m.source, "decision": m.earlier}, 409)

    assert records.golden_id_of(await store.read("Patient", m.source)) == m.third


async def test_the_undo_form_pins_the_decision_it_asked_about(admin, app_client, facility, store):
    """The confirmation names the last decision and carries its id; the form sent twice undoes it once."""
    m = await _twice_moved(app_client, admin, facility)
    asked = await admin.client.post("/admin/undo", data={"patient": m.source, "csrf_token": admin.csrf})
    assert asked.status == 200
    assert f'name="decision" value="{m.last}"' in await asked.text()
    form = {"patient": m.source, "decision": m.last, "confirmed": "yes", "csrf_token": admin.csrf}

    done = [await admin.client.post("/admin/undo", data=form, allow_redirects=False) for _ in range(2)]

    assert [d.status for d in done] == [303, 303]
    assert done[0].headers["Location"] == done[1].headers["Location"]
    assert records.golden_id_of(await store.read("Patient", m.source)) == m.second
