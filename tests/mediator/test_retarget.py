"""A person left without records by a relink (matching, or its last record's POS merge) is its successor
now (``replaced-by``): the open review Tasks naming it follow it as after an admin merge, in the relink's
transaction (real HAPI)."""

from __future__ import annotations

import dataclasses
from typing import Any

from prometheus_client import generate_latest

from mediator import records
from mediator.app import create_app
from mediator.context import METRICS
from mediator.review import POTENTIAL_MATCH, review_task_id
from tests.admin.conftest import make_pair
from tests.admin.test_duplicates import assert_followed_the_successor, other_tasks, review_state
from tests.conftest import metric_samples, patient, unique_surname
from tests.hapi_helpers import MissingSearchParameter, serve_proxy
from tests.mediator.test_pos_merge import merged


def task_searches(app: Any) -> float:
    samples = metric_samples(generate_latest(app[METRICS].registry).decode())
    return samples.get(("cr_fhir_store_call_duration_seconds_count", (("call", "search Task"),)), 0.0)


async def test_a_relink_emptying_a_person_retargets_or_closes_its_open_tasks(
    client, store, facility, settings
):
    tasks = await other_tasks(client, facility, settings)
    pair, keep, lose = tasks.pair, tasks.pair.golden_a, tasks.pair.golden_b
    searches = task_searches(client.server.app)

    # golden_b's only record, sent again with golden_a's demographics: matching relinks it there
    again = patient(pair.system_b, "P2", family=pair.family, given=pair.given)
    resp = await client.post("/fhir/Patient", json=again)

    assert resp.status == 200 and resp.headers["X-CRUID"] == keep, await resp.text()
    assert records.replaced_by(await store.read("Patient", lose)) == keep
    await assert_followed_the_successor(store, tasks, keep, "resolved-by-move")
    assert task_searches(client.server.app) > searches
    latest = {"entity": f"Patient/{pair.source_b}", "_sort": "-_lastUpdated"}
    events = await store.search("AuditEvent", latest)
    named = {e["what"]["reference"] for e in events[0]["entity"]}
    assert {f"Task/{t}" for t in (pair.task, tasks.subject["id"], tasks.dup["id"])} <= named


async def test_a_relink_leaving_records_behind_searches_no_tasks(client, store, facility):
    family, lab = unique_surname(), facility.replace("facility-", "lab-")
    x = await client.post("/fhir/Patient", json=patient(facility, "X1", family=family))
    y = await client.post("/fhir/Patient", json=patient(lab, "Y1", family=family))
    assert x.headers["X-CRUID"] == y.headers["X-CRUID"]
    other = patient(facility, "Z1", family=unique_surname(), given="Neema", birth_date="1970-03-03")
    z = await client.post("/fhir/Patient", json=other)
    searches = task_searches(client.server.app)

    moved = await client.post("/fhir/Patient", json={**other, "identifier": [{"system": lab, "value": "Y1"}]})

    assert moved.headers["X-CRUID"] == z.headers["X-CRUID"] != x.headers["X-CRUID"]
    assert (await store.assert_consistent(records.source_record_id(facility, "X1")))["active"] is True
    assert task_searches(client.server.app) == searches, "no Task search for a person not emptied"


async def test_a_pos_merge_of_a_persons_last_record_takes_its_open_tasks_to_the_survivors_person(
    client, store, facility
):
    pair = await make_pair(client, facility)  # Task: source_b (golden_b, its only record) vs golden_a
    survivor = patient(pair.system_b, "S1", family=unique_surname(), given="Halima", birth_date="1990-01-02")
    s = await client.post("/fhir/Patient", json=survivor)
    target = s.headers["X-CRUID"]
    subsumed = patient(
        pair.system_b, "P2", family=pair.family, given=pair.given, birth_date="1987-05-12", phone=None
    )

    resp = await client.put(f"/fhir/Patient/{pair.source_b}", json=merged(subsumed, (await s.json())["id"]))

    assert resp.status == 200 and resp.headers["X-CRUID"] == target, await resp.text()
    assert records.replaced_by(await store.read("Patient", pair.golden_b)) == target
    assert pair.task == review_task_id(POTENTIAL_MATCH, pair.source_b, pair.golden_a)
    task = await store.read("Task", pair.task)
    assert review_state(task) == ("requested", target, pair.golden_a), "retargeted in place"
    assert await store.search("Task", {"subject": f"Patient/{pair.golden_b}", "status": "requested"}) == []


async def test_without_the_review_candidate_parameter_a_relink_emptying_a_person_waits_503(
    aiohttp_client, aiohttp_server, hapi_url, settings, store, facility
):
    """Before the mediator installed ``review-candidate`` (HAPI: 400 unknown search parameter), the Tasks
    naming the person a relink empties cannot be found: 503, nothing written; the same request succeeds
    once HAPI knows the parameter."""
    forward = MissingSearchParameter(hapi_url, "review-candidate")
    proxy = await serve_proxy(aiohttp_server, forward.handle)
    proxied = await aiohttp_client(create_app(dataclasses.replace(settings, hapi_base_url=proxy)))
    first = await proxied.post("/fhir/Patient", json=patient(facility, "E1", family=unique_surname()))
    other = patient(facility, "E2", family=unique_surname(), given="Neema", birth_date="1970-03-03")
    second = await proxied.post("/fhir/Patient", json=other)
    sid = records.source_record_id(facility, "E1")
    before = await store.read("Patient", sid)
    relinked = {**other, "identifier": [{"system": facility, "value": "E1"}]}

    refused = await proxied.post("/fhir/Patient", json=relinked)

    assert refused.status == 503
    assert (await refused.json(content_type=None))["issue"][0]["code"] == "transient"
    assert await store.read("Patient", sid) == before
    forward.installed = True
    answer = await proxied.post("/fhir/Patient", json=relinked)
    assert answer.status == 200 and answer.headers["X-CRUID"] == second.headers["X-CRUID"]
    assert (
        records.replaced_by(await store.read("Patient", first.headers["X-CRUID"]))
        == answer.headers["X-CRUID"]
    )
