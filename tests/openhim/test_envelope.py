"""The OpenHIM envelope of requests routed by the core; the client id requirement behind OpenHIM.

These tests need no FHIR store: the HAPI address refuses connections, which is also how an error answer
(503) is produced — the envelope must carry it with status Failed and the failed call as an orchestration.
"""

from __future__ import annotations

import json

from mediator.app import create_app
from mediator.openhim import OPENHIM
from tests.conftest import patient, unique_surname
from tests.openhim.conftest import behind, mediator_url

URN = "urn:mediator:client-registry"


async def test_routed_request_gets_the_envelope(core, offline_settings, start_mediator):
    client, _ = await start_mediator(behind(core, offline_settings, openhim_allow_open_mode=True))
    tx = await core.route(mediator_url(client), "GET", "/fhir/metadata")
    assert tx.enveloped and tx.problems == []
    assert tx.mediator_urn == URN and tx.status == "Successful"
    assert tx.response["status"] == 200
    assert tx.response["headers"]["Content-Type"].startswith("application/fhir+json")
    assert isinstance(tx.response["body"], str) and tx.json()["resourceType"] == "CapabilityStatement"
    assert tx.orchestrations == [] and tx.properties == {}


async def test_without_the_core_the_answer_is_plain_fhir(core, offline_settings, start_mediator):
    client, _ = await start_mediator(behind(core, offline_settings))
    resp = await client.get("/fhir/metadata")
    assert resp.status == 200 and resp.content_type == "application/fhir+json"
    assert (await resp.json(content_type=None))["resourceType"] == "CapabilityStatement"


async def test_upstream_failure_is_enveloped_as_failed_with_the_call(
    core, offline_settings, start_mediator, facility
):
    client, _ = await start_mediator(behind(core, offline_settings, openhim_allow_open_mode=True))
    body = patient(facility, "E1", family=unique_surname())
    tx = await core.route(mediator_url(client), "POST", "/fhir/Patient", body=body)
    assert tx.problems == []
    assert tx.response["status"] == 503 and tx.status == "Failed"
    assert tx.error and "503" in tx.error["message"], "an error lets the core auto-retry"
    outcome = tx.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "transient"
    assert tx.orchestrations, "the failed HAPI call(s) are listed"
    for call in tx.orchestrations:
        assert call["name"].startswith("HAPI FHIR: ")
        assert call["request"]["method"] == "GET" and call["request"]["timestamp"]
        assert call["request"]["port"] == offline_settings.hapi_base_url.split(":")[2].split("/")[0]
        assert "response" not in call and "ClientConnectorError" in call["error"]["message"]


async def test_request_without_client_id_is_refused_behind_openhim(
    core, offline_settings, start_mediator, facility
):
    client, _ = await start_mediator(behind(core, offline_settings))
    body = patient(facility, "E2", family=unique_surname())
    tx = await core.route(mediator_url(client), "POST", "/fhir/Patient", body=body, client_id=None)
    assert tx.problems == [] and tx.enveloped
    assert tx.response["status"] == 403 and tx.status == "Completed"
    assert tx.json()["issue"][0]["code"] == "forbidden"
    assert tx.orchestrations == [], "refused before the FHIR store was asked anything"


async def test_anonymous_allowed_by_setting(core, offline_settings, start_mediator, facility):
    client, _ = await start_mediator(
        behind(core, offline_settings, openhim_allow_anonymous=True, openhim_allow_open_mode=True)
    )
    body = patient(facility, "E3", family=unique_surname())
    tx = await core.route(mediator_url(client), "POST", "/fhir/Patient", body=body, client_id=None)
    assert tx.response["status"] == 503, "went on to the (unreachable) FHIR store"
    assert tx.orchestrations


async def test_bad_input_is_enveloped_as_completed(core, offline_settings, start_mediator):
    client, _ = await start_mediator(behind(core, offline_settings, openhim_allow_open_mode=True))
    tx = await core.route(mediator_url(client), "POST", "/fhir/Patient", body={"resourceType": "Observation"})
    assert tx.response["status"] == 400 and tx.status == "Completed" and tx.error is None
    assert json.loads(tx.response["body"])["resourceType"] == "OperationOutcome"


async def test_without_openhim_settings_the_mediator_runs_on_its_own(aiohttp_client, offline_settings):
    app = create_app(offline_settings)
    client = await aiohttp_client(app)
    assert OPENHIM not in app
    resp = await client.get("/fhir/metadata", headers={"X-OpenHIM-TransactionID": "0" * 24})
    assert resp.status == 200 and resp.content_type == "application/fhir+json"
