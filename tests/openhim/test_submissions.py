"""Submissions routed through the core emulator to the mediator and the real HAPI server."""

from __future__ import annotations

import dataclasses
import json

import pytest
from aiohttp import web

from mediator.admin.score_index import SCORE_INDEX
from mediator.context import CONFIG, STORE
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import forward_to_hapi, serve_proxy
from tests.openhim.conftest import URN, WAIT_S, behind, console_edit, mediator_url, poll_until

pytestmark = pytest.mark.hapi


async def _mediator(core, settings, start_mediator):
    # open mode wanted: most tests here submit without a client map (test_fail_closed.py: without it)
    client, link = await start_mediator(behind(core, settings, openhim_allow_open_mode=True))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    return mediator_url(client), link, client.server.app


async def test_submission_envelope_has_orchestrations_and_properties(
    core, settings, start_mediator, facility, store
):
    url, _, _ = await _mediator(core, settings, start_mediator)
    tx = await core.route(url, "POST", "/fhir/Patient", body=patient(facility, "T1", family=unique_surname()))
    assert tx.problems == [] and tx.enveloped and tx.mediator_urn == URN
    assert tx.response["status"] == 201 and tx.status == "Successful"
    answer = tx.json()
    headers = tx.response["headers"]
    assert headers["Location"].startswith(f"Patient/{answer['id']}")
    assert tx.properties["CRUID"] == headers["X-CRUID"]
    assert tx.properties["decision"] == headers["X-Match-Outcome"]
    assert tx.properties["sourceRecord"] == f"Patient/{answer['id']}"
    assert tx.properties["goldenRecord"] == headers["LocationCRUID"] or tx.properties["goldenRecord"]
    assert "score" in tx.properties or tx.properties["decision"] == "no_match"

    names = [o["name"] for o in tx.orchestrations]
    assert all(n.startswith("HAPI FHIR: ") for n in names)
    (write,) = [o for o in tx.orchestrations if o["name"] == "HAPI FHIR: transaction"]
    assert write["request"]["method"] == "POST" and write["response"]["status"] == 200
    bundle = json.loads(write["request"]["body"])
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    assert any(e["resource"].get("id") == answer["id"] for e in bundle["entry"])
    for o in tx.orchestrations:
        assert o["request"]["timestamp"] <= o["response"]["timestamp"]
        assert isinstance(o["response"]["body"], str)
    assert len(tx.orchestrations) >= 2, "reads/searches before the one write"

    source = await store.read("Patient", answer["id"])
    assert source is not None


async def _second_of_a_family(core, url, facility):
    """Two people of one family (the first is the second's candidate); the second's transaction."""
    family = unique_surname()
    first = patient(facility, "P1", family=family, given="Wanjiru", birth_date="1961-03-05")
    second = patient(facility, "P2", family=family, given="Odhiambo", birth_date="1990-11-30")
    assert (await core.route(url, "POST", "/fhir/Patient", body=first)).response["status"] == 201
    tx = await core.route(url, "POST", "/fhir/Patient", body=second)
    assert tx.response["status"] == 201 and tx.problems == []
    shown = json.dumps(tx.orchestrations)
    values = [family, "Wanjiru", "Odhiambo", "1961-03-05", "1990-11-30", second["telecom"][0]["value"]]
    return tx, shown, values


async def test_orchestrations_show_ids_and_statuses_never_demographics(
    core, settings, start_mediator, facility
):
    """What OpenHIM stores of a submission's HAPI calls names records by id and version only: not the
    submitted person's demographics, not the candidates' (other people's), not blocking keys made of them."""
    url, _, _ = await _mediator(core, settings, start_mediator)
    tx, shown, values = await _second_of_a_family(core, url, facility)
    assert [v for v in values if v in shown] == []
    (write,) = [o for o in tx.orchestrations if o["name"] == "HAPI FHIR: transaction"]
    sent = json.loads(write["request"]["body"])
    written = {e["request"]["url"] for e in sent["entry"]}
    assert f"Patient/{tx.json()['id']}" in written  # the records written can still be found
    assert {e["resource"]["resourceType"] for e in sent["entry"]} >= {"Patient", "AuditEvent"}
    assert all(set(e["resource"]) <= {"resourceType", "id", "meta"} for e in sent["entry"])
    answered = json.loads(write["response"]["body"])
    assert [e["response"]["status"][:3] for e in answered["entry"]] and all(
        "location" in e["response"] for e in answered["entry"]
    )


async def test_full_orchestration_bodies_show_what_was_sent_when_asked(
    core, settings, start_mediator, facility
):
    """The control: with ``CR_OPENHIM_ORCHESTRATION_BODIES=full`` the same check finds the demographics."""
    full = dataclasses.replace(settings, openhim_orchestration_bodies="full")
    url, _, _ = await _mediator(core, full, start_mediator)
    _, shown, values = await _second_of_a_family(core, url, facility)
    assert {values[0], "Odhiambo", "1990-11-30"} <= {v for v in values if v in shown}


async def test_console_threshold_change_changes_the_next_decision(core, settings, start_mediator, facility):
    url, link, app = await _mediator(core, settings, start_mediator)
    family = unique_surname()
    systems = [facility, facility.replace("facility-", "clinic-"), facility.replace("facility-", "hc-")]

    first = await core.route(url, "POST", "/fhir/Patient", body=patient(systems[0], "L1", family=family))
    second = await core.route(url, "POST", "/fhir/Patient", body=patient(systems[1], "L2", family=family))
    assert (first.response["status"], second.response["status"]) == (201, 201)
    assert second.properties["decision"] == "match", "same person, default thresholds: linked"
    assert second.properties["CRUID"] == first.properties["CRUID"]

    await console_edit(core, link, overrideThresholds=True, autoMatchThreshold=99, potentialMatchThreshold=98)
    assert app[CONFIG].current.rules.auto_threshold == 99

    third = await core.route(url, "POST", "/fhir/Patient", body=patient(systems[2], "L3", family=family))
    assert third.response["status"] == 201
    assert third.properties["decision"] == "no_match"
    assert third.properties["CRUID"] != first.properties["CRUID"], "not linked under the stricter rule"


async def test_a_console_store_address_swaps_in_a_new_client_and_nothing_of_the_old_store(
    core, settings, start_mediator, facility, aiohttp_server, hapi_url
):
    """The console points the mediator at another FHIR store (here the same HAPI behind a proxy that sees
    every call): the app gets a new client, the old one is left as it was (requests in flight finish on
    it), the next submission goes to the new store, and nothing known of the old store answers for it."""
    seen: list[str] = []

    async def new_store(request: web.Request) -> web.Response:
        seen.append(request.path)
        return await forward_to_hapi(hapi_url, request)

    new_url = await serve_proxy(aiohttp_server, new_store)
    url, link, app = await _mediator(core, settings, start_mediator)
    store = app[STORE]
    old_hapi, old_registry = store.hapi, store.registry
    family = unique_surname()
    first = await core.route(url, "POST", "/fhir/Patient", body=patient(facility, "N1", family=family))
    assert first.response["status"] == 201
    assert len(old_registry.sources) >= 1  # its record is held, as the old store's
    assert await app[SCORE_INDEX].install(old_hapi) >= 0 and app[SCORE_INDEX].is_ready()

    await console_edit(core, link, hapiBaseUrl=new_url + "/", hapiTimeoutSeconds=7)
    assert store.hapi is not old_hapi and store.hapi.base_url == new_url and store.hapi._timeout.total == 7
    assert old_hapi.base_url == settings.hapi_base_url  # not changed in place
    assert old_hapi._timeout.total == settings.hapi_timeout_s
    assert await old_hapi.metadata() is not None  # still usable by requests in flight
    assert store.registry is not old_registry and store.registry.hapi is store.hapi
    assert len(store.registry.sources) == 0  # no record of the old store is held for the new one

    # the review-score index state was the old store's: it is installed again, in the new store
    async def reinstalled() -> bool:
        return "/fhir/SearchParameter/cr-review-score" in seen

    await poll_until(reinstalled)

    seen.clear()
    again = await core.route(url, "POST", "/fhir/Patient", body=patient(facility, "N1", family=family))
    assert again.response["status"] == 200 and again.properties["CRUID"] == first.properties["CRUID"]
    assert "/fhir/" in seen, "the submission's transaction went to the new store"
    sources = store.registry.sources
    assert sources.hits == 0 and sources.reads >= 1, "its candidate was read from the new store"


async def test_console_client_map_enforces_identifier_systems(
    core, settings, start_mediator, facility, store
):
    url, link, _ = await _mediator(core, settings, start_mediator)
    sys_a, sys_b = facility, facility.replace("facility-", "clinic-")
    sys_open = facility.replace("facility-", "open-")

    # open mode (no map yet): any client may use any system
    tx = await core.route(
        url, "POST", "/fhir/Patient", body=patient(sys_open, "O1", family=unique_surname()), client_id="pos-b"
    )
    assert tx.response["status"] == 201

    await console_edit(core, link, clientSystems={"pos-a": sys_a, "pos-b": f"{sys_b} {sys_open}"})

    refused = await core.route(
        url, "POST", "/fhir/Patient", body=patient(sys_b, "B1", family=unique_surname()), client_id="pos-a"
    )
    assert refused.problems == [] and refused.response["status"] == 403
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "forbidden"
    assert sys_b in outcome["issue"][0]["diagnostics"]
    assert refused.orchestrations == [], "refused before any call to the FHIR store"

    mixed = patient(
        sys_a, "A2", family=unique_surname(), extra_identifiers=[{"system": sys_b, "value": "B2"}]
    )
    refused_mixed = await core.route(url, "POST", "/fhir/Patient", body=mixed, client_id="pos-a")
    assert refused_mixed.response["status"] == 403

    unknown = await core.route(
        url, "POST", "/fhir/Patient", body=patient(sys_a, "A3", family=unique_surname()), client_id="pos-z"
    )
    assert unknown.response["status"] == 403

    assert await store.sources_with(sys_b) == [], "nothing was written"
    assert await store.sources_with(sys_a) == []

    own = await core.route(
        url, "POST", "/fhir/Patient", body=patient(sys_a, "A1", family=unique_surname()), client_id="pos-a"
    )
    assert own.response["status"] == 201
    other = await core.route(
        url, "POST", "/fhir/Patient", body=patient(sys_b, "B1", family=unique_surname()), client_id="pos-b"
    )
    assert other.response["status"] == 201
    assert [s["id"] for s in await store.sources_with(sys_b)] == [other.json()["id"]]


async def test_a_demographics_match_through_the_core(core, settings, start_mediator, facility):
    """``POST /fhir/Patient/$match`` is routed by the channel like a submission: the POS gets the person's
    identifiers, and what OpenHIM stores of the query names no demographics."""
    url, _, _ = await _mediator(core, settings, start_mediator)
    family = unique_surname()
    stored = await core.route(url, "POST", "/fhir/Patient", body=patient(facility, "M1", family=family))
    assert stored.response["status"] == 201
    query = {k: v for k, v in patient(facility, "-", family=family).items() if k != "identifier"}
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": query}]}
    tx = await core.route(url, "POST", "/fhir/Patient/$match", body=body)
    assert tx.problems == [] and tx.enveloped and tx.response["status"] == 200
    [entry] = tx.json()["entry"]
    cruid = stored.response["headers"]["X-CRUID"]
    assert {(i["system"], i["value"]) for i in entry["resource"]["identifier"]} >= {
        (settings.cruid_system, cruid),
        (facility, "M1"),
    }
    shown = json.dumps(tx.orchestrations)
    assert family not in shown and query["birthDate"] not in shown


async def test_a_delete_through_the_core_is_enveloped_with_its_properties(
    core, settings, start_mediator, facility, store
):
    url, _, _ = await _mediator(core, settings, start_mediator)
    family = unique_surname()
    created = await core.route(url, "POST", "/fhir/Patient", body=patient(facility, "D1", family=family))
    source_id = created.json()["id"]

    tx = await core.route(url, "DELETE", f"/fhir/Patient/{source_id}")

    assert tx.problems == [] and tx.enveloped and tx.status == "Successful"
    assert tx.response["status"] == 200
    assert tx.json()["resourceType"] == "OperationOutcome"
    assert tx.properties == {
        "action": "delete",
        "sourceRecord": f"Patient/{source_id}",
        "goldenRecord": f"Patient/{created.properties['CRUID']}",
        "deletedNow": True,
    }
    (write,) = [o for o in tx.orchestrations if o["name"] == "HAPI FHIR: transaction"]
    sent = json.loads(write["request"]["body"])
    assert {"method": "DELETE", "url": f"Patient/{source_id}"} in [e["request"] for e in sent["entry"]]
    assert family not in json.dumps(tx.orchestrations), "ids and statuses only"
    assert await store.read("Patient", source_id) is None

    missing = await core.route(url, "DELETE", f"/fhir/Patient/{source_id}x")
    assert missing.problems == [] and missing.response["status"] == 404
