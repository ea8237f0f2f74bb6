"""Behind OpenHIM the registry never drops to open mode on its own (issue 19).

A core that forgot the mediator (``DELETE /mediators/:urn``, a reset database) gets, on the re-registration,
the console config last applied — kept in HAPI (mediator/openhim_state.py) — not the start-up settings; and
routed requests are refused with 503 while no client map is in force.
"""

from __future__ import annotations

import logging

import pytest
from aiohttp import web

from mediator import openhim_state
from mediator.context import CONFIG
from tests.conftest import metric_samples, patient, unique_surname
from tests.hapi_helpers import forward_to_hapi, serve_proxy
from tests.openhim.conftest import URN, WAIT_S, behind, console_edit, mediator_url, poll_until

pytestmark = pytest.mark.hapi


async def _stored(store):
    resource = await store.read(openhim_state.RESOURCE_TYPE, openhim_state.RESOURCE_ID)
    return None if resource is None else openhim_state.from_resource(resource)


def _systems(facility):
    return facility, facility.replace("facility-", "clinic-")


async def test_a_core_that_forgot_the_mediator_gets_the_config_last_applied(
    core, settings, start_mediator, facility, store
):
    client, link = await start_mediator(behind(core, settings))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    app, url = client.server.app, mediator_url(client)
    sys_a, sys_b = _systems(facility)
    edited = await console_edit(
        core,
        link,
        clientSystems={"pos-a": sys_a, "pos-b": sys_b},
        overrideThresholds=True,
        autoMatchThreshold=20,
        potentialMatchThreshold=5,
    )
    foreign = patient(sys_a, "A1", family=unique_surname())
    assert (await core.route(url, "POST", "/fhir/Patient", body=foreign, client_id="pos-b")).response[
        "status"
    ] == 403
    await poll_until(lambda: _same(store, edited))

    core.forget(URN)  # DELETE /mediators/:urn
    await link.wait_for(lambda: link.registrations == 2 and link.heartbeats >= 3, WAIT_S)

    assert core.mediators[URN]["config"] == edited, "registered again with the console's config"
    assert app[CONFIG].current.client_systems == {"pos-a": frozenset({sys_a}), "pos-b": frozenset({sys_b})}
    assert app[CONFIG].current.rules.auto_threshold == 20
    tx = await core.route(url, "POST", "/fhir/Patient", body=foreign, client_id="pos-b")
    assert tx.response["status"] == 403, "still refused: no open mode after the re-registration"
    own = await core.route(url, "POST", "/fhir/Patient", body=foreign, client_id="pos-a")
    assert own.response["status"] == 201


async def _same(store, config):
    return await _stored(store) == config


async def test_a_restarted_mediator_gives_a_reset_core_the_config_kept_in_hapi(
    core, settings, start_mediator, facility, store
):
    first, link = await start_mediator(behind(core, settings))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    sys_a, sys_b = _systems(facility)
    edited = await console_edit(core, link, clientSystems={"pos-a": sys_a, "pos-b": sys_b}, maxCandidates=77)
    await poll_until(lambda: _same(store, edited))
    await first.close()  # the mediator stops ...
    await core.restart(wipe=True)  # ... and the core comes back with an empty database

    client, again = await start_mediator(behind(core, settings))  # a restart, or another replica
    await again.wait_for(lambda: again.configs_applied == 1, WAIT_S)
    assert core.mediators[URN]["config"] == edited
    current = client.server.app[CONFIG].current
    assert current.max_candidates == 77 and not current.open_mode
    tx = await core.route(
        mediator_url(client), "POST", "/fhir/Patient", body=patient(sys_a, "A1", family=unique_surname()),
        client_id="pos-b",
    )  # fmt: skip
    assert tx.response["status"] == 403


async def test_no_client_map_in_force_refuses_routed_requests_with_503(
    core, settings, start_mediator, facility, caplog
):
    """The start-up settings have no client map and open mode is not asked for: nothing routed is served
    until the console sets one; the refusal says why, is logged and counted."""
    client, link = await start_mediator(behind(core, settings))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    url = mediator_url(client)
    body = patient(facility, "N1", family=unique_surname())
    with caplog.at_level(logging.WARNING, logger="mediator.openhim"):
        for _ in range(2):
            tx = await core.route(url, "POST", "/fhir/Patient", body=body, client_id="pos-a")
            assert tx.problems == [] and tx.response["status"] == 503 and tx.status == "Failed"
            assert tx.error is not None, "an error: a channel with auto-retry retries the transaction"
            assert (await client.get("/health")).status == 200, "the mediator's own pages are not refused"
    outcome = tx.json()
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "transient"
    assert "Identifier systems allowed per client" in outcome["issue"][0]["diagnostics"]
    assert tx.orchestrations == [], "refused before any call to the FHIR store"
    assert caplog.text.count("no client map is in force") == 2, "at the config's apply, at the 1st refusal"
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("cr_openhim_requests_refused_total", (("reason", "no_client_map"),))] == 2
    assert samples[("cr_openhim_client_map_in_force", ())] == 0

    await console_edit(core, link, clientSystems={"pos-a": facility})
    tx = await core.route(url, "POST", "/fhir/Patient", body=body, client_id="pos-a")
    assert tx.response["status"] == 201
    samples = metric_samples(await (await client.get("/metrics")).text())
    assert samples[("cr_openhim_client_map_in_force", ())] == 1
    assert samples[("cr_openhim_requests_refused_total", (("reason", "no_client_map"),))] == 2


async def test_open_mode_behind_openhim_only_when_asked(core, settings, start_mediator, facility):
    client, link = await start_mediator(behind(core, settings, openhim_allow_open_mode=True))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    tx = await core.route(
        mediator_url(client), "POST", "/fhir/Patient", body=patient(facility, "O1", family=unique_surname())
    )
    assert tx.response["status"] == 201


async def test_a_store_that_cannot_answer_at_registration_gets_the_config_back_later(
    core, settings, start_mediator, facility, store, aiohttp_server
):
    """The whole stack restarts, the core's database is gone and HAPI is still starting: the mediator
    registers with its start-up settings (no client map: it refuses requests), and once HAPI answers it
    gives the core the config kept there. HAPI 'starting' is a proxy answering 503 (a real HAPI cannot be
    made to)."""
    first, link = await start_mediator(behind(core, settings))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    sys_a, sys_b = _systems(facility)
    edited = await console_edit(core, link, clientSystems={"pos-a": sys_a, "pos-b": sys_b})
    await poll_until(lambda: _same(store, edited))
    await first.close()
    await core.restart(wipe=True)

    starting = True

    async def hapi(request: web.Request) -> web.Response:
        if starting:
            return web.Response(status=503, text="HAPI is starting")
        return await forward_to_hapi(settings.hapi_base_url, request)

    proxy = await serve_proxy(aiohttp_server, hapi)
    client, again = await start_mediator(behind(core, settings, hapi_base_url=proxy))
    await again.wait_for(lambda: again.configs_applied == 1, WAIT_S)
    assert client.server.app[CONFIG].current.open_mode, "the start-up settings, for now"
    body = patient(sys_a, "A1", family=unique_surname())
    tx = await core.route(mediator_url(client), "POST", "/fhir/Patient", body=body)
    assert tx.response["status"] == 503

    starting = False
    await again.wait_for(lambda: again.configs_applied == 2, WAIT_S)
    assert again.configs_restored == 1
    assert core.mediators[URN]["config"] == edited
    assert client.server.app[CONFIG].current.client_systems["pos-b"] == frozenset({sys_b})
