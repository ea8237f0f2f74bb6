"""The mediator against a real OpenHIM core v8.5.0, end to end (issue 19): registration, heartbeats, the
default channel, POS submissions routed through the core's router on :5001 and their transactions, console
config changes, the core forgetting the mediator (the fail-open case), a core restart; and where the core
emulator (tests/openhim_emulator.py) models what these touch, that it answers the same.

Run: README, 'Tests against a real OpenHIM core'. Skipped (reason shown with ``-rs``) without one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from mediator.app import create_app
from mediator.context import CONFIG
from mediator.openhim import OPENHIM
from mediator.openhim_auth import basic_header
from mediator.openhim_config import load_registration
from mediator.settings import Settings
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import forward_to_hapi, serve_proxy
from tests.openhim.conftest import poll_until
from tests.openhim_emulator import CoreEmulator, User, ValidationError, validate_config
from tests.openhim_real.conftest import CORE_ENV, FOLDER
from tests.openhim_real.core import CHANNEL, ROOT, URN, URN_PATH, VIEWER

_UNRAISABLE = ":pytest.PytestUnraisableExceptionWarning"
UNCLOSED_CORE_SOCKET = (
    r"ignore:Exception ignored in. <socket.socket .*raddr=\('127.0.0.1', 8080\)" + _UNRAISABLE
)
UNCLOSED_TRANSPORT = "ignore:Exception ignored in. <function _SelectorTransport.__del__" + _UNRAISABLE
pytestmark = [
    pytest.mark.skipif(
        not FOLDER,
        reason=f"no real OpenHIM core: set {CORE_ENV} to the folder of a core built by "
        "../shared/openhim-real/build.sh (README, 'Tests against a real OpenHIM core')",
    ),
    pytest.mark.hapi,
    # a TLS connection to the core's API (:8080) left open by asyncio when its handshake was cancelled
    # (conftest.py, _transports_collected_within_the_test): its socket, which names :8080, and its transport,
    # whose message names no address; other unclosed sockets and resources still fail the test
    pytest.mark.filterwarnings(UNCLOSED_CORE_SOCKET),
    pytest.mark.filterwarnings(UNCLOSED_TRANSPORT),
]
CORE_WAIT_S = 30.0  # the real core, on FerretDB, on a shared machine


async def _registered(start_mediator, settings):
    client, link = await start_mediator(settings)
    await link.wait_for(lambda: link.configs_applied >= 1 and link.channels_done, CORE_WAIT_S)
    return client, link


async def _console(core, link, **changes) -> dict[str, Any]:
    """A console edit: the whole config, changed, saved with PUT /mediators/:urn/config (as root)."""
    applied = link.configs_applied
    stored = (await core.mediator())["config"]
    config = {**stored, **changes}
    status, text = await core.api("PUT", f"/mediators/{URN_PATH}/config", config)
    assert status == 200, (status, text)
    await link.wait_for(lambda: link.configs_applied > applied or link.config_errors, CORE_WAIT_S)
    assert not link.config_errors, link.config_errors
    return config


def _systems(facility: str) -> tuple[str, str]:
    return facility, facility.replace("facility-", "clinic-")


async def _two_facilities(core, real_settings, start_mediator, facility) -> tuple[str, str]:
    """A registered mediator whose console config maps emr-kisenyi and emr-mulago to an identifier system
    each: (kisenyi's, mulago's)."""
    _, link = await _registered(start_mediator, real_settings)
    sys_k, sys_m = _systems(facility)
    await _console(core, link, clientSystems={"emr-kisenyi": sys_k, "emr-mulago": sys_m})
    return sys_k, sys_m


async def _finished(core, tx_id: str) -> dict[str, Any]:
    """The stored transaction once the core set its final status (it does so after answering)."""
    found: dict[str, Any] = {}

    async def done() -> bool:
        found.update(await core.transaction(tx_id))
        return found.get("status") not in (None, "Processing")

    await poll_until(done, CORE_WAIT_S)
    return found


async def test_registration_heartbeat_and_default_channel(core, real_settings, start_mediator):
    _, link = await _registered(start_mediator, real_settings)
    await link.wait_for(lambda: link.heartbeats >= 3, CORE_WAIT_S)
    assert link.registrations == 1 and link.channel_error is None
    assert link.channels_installed == [CHANNEL]
    stored = await core.mediator()
    assert stored is not None and stored["version"] == link.registration["version"]
    assert stored["_lastHeartbeat"] and stored["config"]["hapiBaseUrl"] == real_settings.hapi_base_url
    channel = await core.channel()
    assert channel is not None and channel["allow"] == ["client-registry-pos"]
    assert [(r["host"], r["port"]) for r in channel["routes"]] == [
        ("127.0.0.1", real_settings.openhim_mediator_port)
    ]


async def test_a_submission_through_the_router_and_its_transaction(
    core, real_settings, start_mediator, facility
):
    sys_k, _ = await _two_facilities(core, real_settings, start_mediator, facility)
    family = unique_surname()
    status, headers, body = await core.route("POST", "/fhir/Patient", patient(sys_k, "K1", family=family))
    assert status == 201, body
    assert body["resourceType"] == "Patient" and headers["Location"].startswith("Patient/")
    tx = await _finished(core, headers["X-OpenHIM-TransactionID"])
    assert tx["status"] == "Successful" and tx["response"]["status"] == 201
    assert tx["properties"]["sourceRecord"] == f"Patient/{body['id']}"
    assert tx["properties"]["decision"] in ("match", "potential", "no_match")
    names = [o["name"] for o in tx["orchestrations"]]
    assert "HAPI FHIR: transaction" in names, names
    ours = [o for o in tx["orchestrations"] if o["name"].startswith("HAPI FHIR: ")]
    assert family not in json.dumps(ours), "the mediator's orchestrations hold ids, not demographics"
    # the core's own orchestration of its call to the mediator holds the whole submission (docs, Privacy)
    (own,) = [o for o in tx["orchestrations"] if o["name"] == "Client Registry mediator"]
    assert family in own["request"]["body"]

    # another facility's system: refused by the mediator, the transaction 'Completed'
    status, headers, outcome = await core.route(
        "POST", "/fhir/Patient", patient(sys_k, "K2", family=unique_surname()), client="emr-mulago"
    )
    assert status == 403 and outcome["resourceType"] == "OperationOutcome"
    assert (await _finished(core, headers["X-OpenHIM-TransactionID"]))["status"] == "Completed"


async def test_a_demographics_match_through_the_router(core, real_settings, start_mediator, facility):
    """``POST /fhir/Patient/$match`` through the real router: the channel takes it, the caller gets the
    person's identifiers in its own domains, and the mediator's orchestrations name no demographics."""
    sys_k, sys_m = await _two_facilities(core, real_settings, start_mediator, facility)
    family = unique_surname()
    status, headers, _ = await core.route("POST", "/fhir/Patient", patient(sys_k, "K1", family=family))
    assert status == 201
    cruid = headers["X-CRUID"]
    await core.route("POST", "/fhir/Patient", patient(sys_m, "M1", family=family), client="emr-mulago")
    query = {k: v for k, v in patient(sys_k, "-", family=family).items() if k != "identifier"}
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": query}]}
    status, headers, bundle = await core.route("POST", "/fhir/Patient/$match", body)
    assert status == 200, bundle
    [entry] = bundle["entry"]
    seen = {(i["system"], i["value"]) for i in entry["resource"]["identifier"]}
    assert seen == {(real_settings.cruid_system, cruid), (sys_k, "K1")}  # not emr-mulago's M1
    tx = await _finished(core, headers["X-OpenHIM-TransactionID"])
    assert tx["status"] == "Successful" and tx["response"]["status"] == 200
    ours = [o for o in tx["orchestrations"] if o["name"].startswith("HAPI FHIR: ")]
    assert ours and family not in json.dumps(ours)


async def test_a_retraction_through_the_router(core, real_settings, start_mediator, facility):
    """``DELETE /fhir/Patient/{id}`` through the real router: the default channel takes the method, the
    owner's deletion is answered 200 with its properties on the transaction, another client's is 404 (as a
    record never stored: whether another client holds an identifier is not told)."""
    sys_k, _ = await _two_facilities(core, real_settings, start_mediator, facility)
    family = unique_surname()
    status, headers, body = await core.route("POST", "/fhir/Patient", patient(sys_k, "K1", family=family))
    assert status == 201, body
    source_id, cruid_record = body["id"], headers["LocationCRUID"]

    status, headers, outcome = await core.route("DELETE", f"/fhir/Patient/{source_id}", client="emr-mulago")
    assert status == 404 and outcome["resourceType"] == "OperationOutcome"

    status, headers, outcome = await core.route("DELETE", f"/fhir/Patient/{source_id}")
    assert status == 200 and outcome["resourceType"] == "OperationOutcome", outcome
    tx = await _finished(core, headers["X-OpenHIM-TransactionID"])
    assert tx["status"] == "Successful" and tx["response"]["status"] == 200
    assert tx["properties"] == {
        "action": "delete",
        "sourceRecord": f"Patient/{source_id}",
        "goldenRecord": cruid_record,
        "deletedNow": True,
    }
    ours = [o for o in tx["orchestrations"] if o["name"].startswith("HAPI FHIR: ")]
    assert ours and family not in json.dumps(ours)

    status, _, _ = await core.route("GET", f"/fhir/Patient/$ihe-pix?sourceIdentifier={quote(sys_k)}|K1")
    assert status == 404


async def test_the_core_keeps_the_submission_even_with_channel_bodies_off(
    core, real_settings, start_mediator, facility
):
    """Measured for docs/openhim.md (Privacy): with the channel's request and response bodies switched off,
    the core's own orchestration still holds the submission."""
    _, link = await _registered(start_mediator, real_settings)
    await _console(core, link, clientSystems={"emr-kisenyi": facility})
    channel = await core.channel()
    status, text = await core.api(
        "PUT", f"/channels/{channel['_id']}", {"requestBody": False, "responseBody": False}
    )
    assert status == 200, (status, text)
    family = unique_surname()
    status, headers, _ = await core.route("POST", "/fhir/Patient", patient(facility, "B1", family=family))
    assert status == 201
    tx = await _finished(core, headers["X-OpenHIM-TransactionID"])
    assert family not in json.dumps(tx.get("request", {})), "the channel's own body setting holds"
    (own,) = [o for o in tx["orchestrations"] if o["name"] == "Client Registry mediator"]
    assert family in own["request"]["body"], "the core's orchestration keeps it all the same"


async def test_a_console_config_change_reaches_the_mediator(core, real_settings, start_mediator):
    client, link = await _registered(start_mediator, real_settings)
    await _console(
        core,
        link,
        maxCandidates=77,
        overrideThresholds=True,
        autoMatchThreshold=21,
        potentialMatchThreshold=6,
    )
    current = client.server.app[CONFIG].current
    assert current.max_candidates == 77 and current.rules.auto_threshold == 21

    # an ill-typed value: the core itself refuses it, with the words the emulator uses
    stored = (await core.mediator())["config"]
    bad = {**stored, "hapiTimeoutSeconds": "ten"}
    status, text = await core.api("PUT", f"/mediators/{URN_PATH}/config", bad)
    with pytest.raises(ValidationError) as emulated:
        validate_config(link.registration["configDefs"], bad)
    assert (status, text) == (400, str(emulated.value))
    # a well-typed but invalid one: the core accepts it, the mediator refuses it and keeps the old config
    status, _ = await core.api(
        "PUT",
        f"/mediators/{URN_PATH}/config",
        {**stored, "autoMatchThreshold": 1, "potentialMatchThreshold": 9},
    )
    assert status == 200
    await link.wait_for(lambda: len(link.config_errors) == 1, CORE_WAIT_S)
    assert client.server.app[CONFIG].current is current


async def test_a_core_that_forgot_the_mediator_keeps_the_client_map(
    core, real_settings, start_mediator, facility
):
    """The fail-open case: DELETE /mediators/:urn, the heartbeat's 404, the re-registration."""
    client, link = await _registered(start_mediator, real_settings)
    sys_k, sys_m = _systems(facility)
    edited = await _console(
        core, link, clientSystems={"emr-kisenyi": sys_k, "emr-mulago": sys_m}, maxCandidates=55
    )
    foreign = patient(sys_k, "F1", family=unique_surname())
    assert (await core.route("POST", "/fhir/Patient", foreign, client="emr-mulago"))[0] == 403

    status, text = await core.api("DELETE", f"/mediators/{URN_PATH}")
    assert status == 200 and "successfully removed" in text
    await link.wait_for(lambda: link.registrations == 2 and link.configs_applied >= 2, CORE_WAIT_S)
    stored = await core.mediator()
    assert stored is not None and stored["config"] == edited, "registered again with the console's config"
    assert client.server.app[CONFIG].current.max_candidates == 55
    assert (await core.route("POST", "/fhir/Patient", foreign, client="emr-mulago"))[0] == 403
    assert (await core.route("POST", "/fhir/Patient", foreign, client="emr-kisenyi"))[0] == 201

    # no client map at all: the mediator refuses what the core routes (503, Failed), it does not serve
    await _console(core, link, clientSystems={})
    status, headers, outcome = await core.route(
        "POST", "/fhir/Patient", patient(sys_m, "M1", family=unique_surname())
    )
    assert status == 503 and "Identifier systems allowed per client" in outcome["issue"][0]["diagnostics"]
    assert (await _finished(core, headers["X-OpenHIM-TransactionID"]))["status"] == "Failed"


async def test_a_core_restart(core, real_settings, start_mediator, facility):
    _, link = await _registered(start_mediator, real_settings)
    await _console(core, link, clientSystems={"emr-kisenyi": facility})
    await core.restart()
    await link.wait_for(lambda: link.registrations == 2, CORE_WAIT_S)
    beats = link.heartbeats
    await link.wait_for(lambda: link.heartbeats >= beats + 2, CORE_WAIT_S)
    assert (await core.mediator())["config"]["clientSystems"] == {"emr-kisenyi": facility}
    status, _, body = await core.route(
        "POST", "/fhir/Patient", patient(facility, "R1", family=unique_surname())
    )
    assert status == 201, body


async def test_the_emulator_denies_what_the_real_core_denies(core):
    """v8.5.0's admin-group check and its 403 texts; what a registration's and a console's config keep of
    an empty object (nothing); DELETE's answer."""
    emulator = CoreEmulator(core_version="8.5.0")
    emulator.users[VIEWER[0]] = User(VIEWER[0], VIEWER[1], groups=("users",))
    await emulator.start()
    try:
        for method, path, body in (
            ("POST", "/mediators", {"urn": URN}),
            ("POST", f"/mediators/{URN_PATH}/heartbeat", {"uptime": 1}),
            ("PUT", f"/mediators/{URN_PATH}/config", {}),
            ("POST", f"/mediators/{URN_PATH}/channels", [CHANNEL]),
        ):
            real = await core.api(method, path, body, user=VIEWER)
            emulated = await emulator_call(emulator, method, path, body, user=VIEWER)
            assert real == emulated, (method, path)
            assert real[0] == 403

        # what each keeps of a registration's and a console's config: no empty object (mongoose minimize)
        doc = load_registration(Settings())
        doc["urn"] = "urn:mediator:cr-agreement-test"
        doc["config"] = {**doc["config"], "clientSystems": {}}
        path = f"/mediators/{quote(doc['urn'], safe='')}"
        kept, answers = [], []
        for call in (
            functools.partial(core.api, user=ROOT),
            functools.partial(emulator_call, emulator, user=ROOT),
        ):
            assert (await call("DELETE", path, None))[0] == 200  # left by an interrupted run
            assert (await call("POST", "/mediators", doc))[0] == 201
            status, stored = await call("GET", path, None)
            kept.append(json.loads(stored) if isinstance(stored, str) else stored)
            edited = {**kept[-1]["config"], "clientSystems": {}, "maxCandidates": 9}
            assert (await call("PUT", f"{path}/config", edited))[0] == 200
            status, stored = await call("GET", path, None)
            kept.append(json.loads(stored) if isinstance(stored, str) else stored)
            answers.append(await call("POST", f"{path}/channels", ["No such channel"]))
            status, text = await call("DELETE", path, None)
            assert status == 200 and "successfully removed by root@openhim.org" in str(text)
        real_kept, emulated_kept = (
            [kept[0]["config"], kept[1]["config"]],
            [kept[2]["config"], kept[3]["config"]],
        )
        assert real_kept == emulated_kept
        assert "clientSystems" not in real_kept[0] and real_kept[1]["maxCandidates"] == 9
        assert answers[0] == answers[1] and answers[0][0] == 400, answers  # an unknown default channel
    finally:
        await emulator.stop()


async def emulator_call(
    emulator: CoreEmulator, method: str, path: str, body: Any, *, user: tuple[str, str] = VIEWER
) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, emulator.url + path, json=body, headers=basic_header(*user)) as resp,
    ):
        return resp.status, await resp.text()


async def test_a_duplicate_channel_is_a_500_naming_e11000(core, real_settings, start_mediator):
    """What the mediator counts as 'installed already' (mediator/openhim.py ``install_channels``)."""
    _, link = await _registered(start_mediator, real_settings)
    assert link.channels_installed == [CHANNEL]
    status, text = await core.api("POST", f"/mediators/{URN_PATH}/channels", [CHANNEL])
    assert status == 500 and "E11000" in text, text


async def test_every_replica_gets_a_console_edit(core, real_settings, start_mediator, aiohttp_client):
    """Two mediators on one urn (replicas): the real core hands an edit to the first heartbeat after it only;
    both apply it because each heartbeat asks for the config."""
    client, link = await _registered(start_mediator, real_settings)
    # its heartbeats further apart, so they seldom overlap the first one's (the core reads, then updates)
    replica = create_app(
        dataclasses.replace(real_settings, openhim_install_channels=False, openhim_heartbeat_s=2.0)
    )
    other = replica[OPENHIM]
    await aiohttp_client(replica)  # on a port of its own (the channel routes to the first)
    await other.wait_for(lambda: other.configs_applied >= 1, CORE_WAIT_S)
    await _console(core, link, maxCandidates=44)
    await other.wait_for(lambda: replica[CONFIG].current.max_candidates == 44, CORE_WAIT_S)
    assert client.server.app[CONFIG].current.max_candidates == 44


async def test_a_store_that_cannot_answer_at_registration_gets_the_config_back_later(
    core, real_settings, start_mediator, facility, aiohttp_server
):
    """The stack restarts with the core's mediator gone and HAPI still starting (a proxy answering 503): the
    mediator registers with its start-up settings — no client map, so the core's requests get 503 — and
    gives the core the config kept in HAPI once HAPI answers (PUT /mediators/:urn/config)."""
    first, link = await _registered(start_mediator, real_settings)
    sys_k, sys_m = _systems(facility)
    edited = await _console(core, link, clientSystems={"emr-kisenyi": sys_k, "emr-mulago": sys_m})
    await link.wait_for(lambda: link._stored == edited, CORE_WAIT_S)  # kept in HAPI
    await first.close()
    status, _ = await core.api("DELETE", f"/mediators/{URN_PATH}")
    assert status == 200

    starting = True

    async def hapi(request: web.Request) -> web.Response:
        if starting:
            return web.Response(status=503, text="HAPI is starting")
        return await forward_to_hapi(real_settings.hapi_base_url, request)

    proxy = await serve_proxy(aiohttp_server, hapi)
    client, again = await start_mediator(dataclasses.replace(real_settings, hapi_base_url=proxy))
    await again.wait_for(lambda: again.configs_applied >= 1, CORE_WAIT_S)
    assert client.server.app[CONFIG].current.open_mode
    status, _, _ = await core.route("POST", "/fhir/Patient", patient(sys_k, "S1", family=unique_surname()))
    assert status == 503

    starting = False
    await again.wait_for(lambda: again.configs_restored == 1 and again.configs_applied >= 2, CORE_WAIT_S)
    assert (await core.mediator())["config"] == edited
    status, _, body = await core.route("POST", "/fhir/Patient", patient(sys_k, "S2", family=unique_surname()))
    assert status == 201, body
