"""Registration, heartbeats and re-registration against the core emulator (no FHIR store needed)."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
import subprocess
from urllib.parse import quote

import aiohttp
import pytest

from mediator.context import CONFIG
from mediator.openhim_auth import basic_header, token_headers
from mediator.openhim_config import load_registration
from tests.openhim.conftest import WAIT_S, behind
from tests.openhim_emulator import ROOT_EMAIL, ROOT_PASSWORD, CoreEmulator

URN = "urn:mediator:client-registry"


async def test_registers_on_start_then_fetches_config_then_heartbeats(core, offline_settings, start_mediator):
    settings = behind(core, offline_settings)
    _, link = await start_mediator(settings)
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= 3, WAIT_S)

    (registration,) = [c for c in core.api_log if c[0] == "POST" and c[1] == "/mediators"]
    assert registration[2] == 201
    assert registration[3] == load_registration(settings)
    stored = core.mediators[URN]
    assert stored["config"]["hapiBaseUrl"] == offline_settings.hapi_base_url
    beats = core.heartbeats(URN)
    assert all(b["config"] is True for b in beats), "each heartbeat asks for the console's config"
    assert all(isinstance(b["uptime"], int | float) for b in beats)
    assert link.registrations == 1 and link.configs_applied == 1
    assert not core.channels, "default channels are only installed when asked"


async def test_core_down_at_start_then_up(offline_settings, start_mediator):
    core = CoreEmulator()  # not started
    try:
        _, link = await start_mediator(behind(core, offline_settings))
        await link.wait_for(lambda: link.failures >= 2, WAIT_S)
        assert link.registrations == 0 and "ClientConnectorError" in (link.last_error or "")
        await core.start()
        await core.wait_for(lambda: len(core.heartbeats(URN)) >= 1, WAIT_S)
        assert URN in core.mediators and link.registrations == 1
    finally:
        await core.stop()


async def test_core_restarted_with_an_empty_database_gets_the_mediator_back(
    core, offline_settings, start_mediator
):
    _, link = await start_mediator(behind(core, offline_settings))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= 1, WAIT_S)
    await core.restart(wipe=True)
    assert URN not in core.mediators
    await core.wait_for(lambda: URN in core.mediators and len(core.heartbeats(URN)) >= 2, WAIT_S)
    assert link.registrations == 2


async def test_404_on_heartbeat_leads_to_registration(core, offline_settings, start_mediator):
    """With the FHIR store unreachable (offline_settings), the config kept in this process is what the
    core gets back (test_fail_closed.py: with the store)."""
    _, link = await start_mediator(behind(core, offline_settings))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= 1, WAIT_S)
    edited = {**core.mediators[URN]["config"], "clientSystems": {"pos-a": "urn:a"}, "maxCandidates": 9}
    assert (await core.console_set_config(URN, edited))[0] == 200
    await link.wait_for(lambda: link.configs_applied == 2, WAIT_S)
    core.forget(URN)
    await core.wait_for(lambda: len(core.heartbeats(URN, status=404)) >= 1, WAIT_S)
    await link.wait_for(lambda: link.registrations == 2, WAIT_S)
    assert URN in core.mediators and core.mediators[URN]["config"] == edited
    assert core.calls("POST", "/mediators")[-1][3]["config"] == edited


async def test_core_5xx_on_registration_is_retried(core, offline_settings, start_mediator):
    core.fail_next_registrations = 2
    _, link = await start_mediator(behind(core, offline_settings))
    await link.wait_for(lambda: link.registrations == 1, WAIT_S)
    assert [c[2] for c in core.calls("POST", "/mediators") if c[1] == "/mediators"] == [500, 500, 201]


async def test_bad_password_is_refused_and_never_registered(core, offline_settings, start_mediator, caplog):
    _, link = await start_mediator(behind(core, offline_settings, openhim_password="wrong"))
    await core.wait_for(lambda: len(core.calls("POST", "/mediators", status=401)) >= 2, WAIT_S)
    assert URN not in core.mediators and link.registrations == 0
    assert "401" in (link.last_error or "")
    assert "wrong" not in caplog.text, "the password is never logged"


async def test_user_without_rights_gets_403(core, offline_settings, start_mediator):
    core.add_user("viewer@example.org", "pw", roles=())
    settings = behind(core, offline_settings, openhim_username="viewer@example.org", openhim_password="pw")
    _, link = await start_mediator(settings)
    await core.wait_for(lambda: len(core.calls("POST", "/mediators", status=403)) >= 1, WAIT_S)
    await link.wait_for(lambda: "403" in (link.last_error or ""), WAIT_S)
    assert URN not in core.mediators


async def test_token_authentication_for_older_cores(core, offline_settings, start_mediator):
    _, link = await start_mediator(behind(core, offline_settings, openhim_auth="token"))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= 2, WAIT_S)
    assert core.calls("GET", f"/authenticate/{ROOT_EMAIL}", status=200)
    assert link.registrations == 1


async def test_token_authentication_with_a_bad_password(core, offline_settings, start_mediator):
    _, link = await start_mediator(behind(core, offline_settings, openhim_auth="token", openhim_password="x"))
    await core.wait_for(lambda: len(core.calls("POST", "/mediators", status=401)) >= 2, WAIT_S)
    assert link.registrations == 0


def test_token_headers_are_what_the_core_checks():
    core = CoreEmulator()
    user = core.users[ROOT_EMAIL]
    good = token_headers(ROOT_EMAIL, user.password, user.salt)
    assert core._token_user(good) is user
    assert good["auth-ts"].endswith("Z") and len(good["auth-token"]) == 128
    assert core._token_user(token_headers(ROOT_EMAIL, "nope", user.salt)) is None
    assert core._token_user({**good, "auth-salt": "other"}) is None


async def test_default_channel_installed_once_when_asked(core, offline_settings, start_mediator):
    settings = behind(core, offline_settings, openhim_install_channels=True)
    _, first = await start_mediator(settings)
    await first.wait_for(lambda: first.channels_done, WAIT_S)
    assert list(core.channels) == ["Client Registry - FHIR Patient"]
    _, second = await start_mediator(settings)  # a second instance (or a restart) finds it there
    await second.wait_for(lambda: second.channels_done, WAIT_S)
    assert core.calls("POST", f"/mediators/{URN}/channels") == core.calls(
        "POST", f"/mediators/{URN}/channels", status=201
    )
    assert len(core.calls("POST", f"/mediators/{URN}/channels")) == 1


async def test_newer_version_replaces_the_registration_but_keeps_console_values(
    core, offline_settings, start_mediator, tmp_path
):
    _, link = await start_mediator(behind(core, offline_settings))
    await link.wait_for(lambda: link.heartbeats >= 1, WAIT_S)
    edited = {**core.mediators[URN]["config"], "maxCandidates": 42}
    assert (await core.console_set_config(URN, edited))[0] == 200

    doc = json.loads(offline_settings.mediator_config_path.read_text())
    same = tmp_path / "same.json"
    same.write_text(json.dumps({**doc, "description": "same version"}))
    _, again = await start_mediator(behind(core, offline_settings, mediator_config_path=same))
    await again.wait_for(lambda: again.registrations == 1, WAIT_S)
    assert core.mediators[URN]["description"] == doc["description"], "same version: nothing changes"

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**doc, "version": "99.0.0", "description": "newer"}))
    client, upgraded = await start_mediator(behind(core, offline_settings, mediator_config_path=newer))
    await upgraded.wait_for(lambda: upgraded.configs_applied == 1, WAIT_S)
    assert core.mediators[URN]["description"] == "newer"
    assert core.mediators[URN]["config"]["maxCandidates"] == 42, "console edits survive an upgrade"
    assert upgraded.registration["config"]["maxCandidates"] == 500
    assert client.server.app[CONFIG].current.max_candidates == 42


# -- TLS ---------------------------------------------------------------------------------------------------
@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    cert, key = tmp_path / "core.pem", tmp_path / "core.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return cert, context


@pytest.fixture
async def tls_core(certificate):
    core = CoreEmulator(ssl_context=certificate[1])
    await core.start()
    yield core
    await core.stop()


async def test_tls_verified_with_a_private_ca_file(tls_core, certificate, offline_settings, start_mediator):
    assert tls_core.url.startswith("https://")
    _, link = await start_mediator(behind(tls_core, offline_settings, openhim_ca_file=str(certificate[0])))
    await link.wait_for(lambda: link.heartbeats >= 1, WAIT_S)


async def test_tls_refuses_an_unknown_certificate(tls_core, offline_settings, start_mediator):
    _, link = await start_mediator(behind(tls_core, offline_settings))
    await link.wait_for(lambda: link.failures >= 2, WAIT_S)
    assert link.registrations == 0 and "Certificate" in (link.last_error or "")
    assert not tls_core.api_log


async def test_tls_verification_off_is_explicit_and_warned(
    tls_core, offline_settings, start_mediator, caplog
):
    with caplog.at_level(logging.WARNING, logger="mediator.openhim"):
        _, link = await start_mediator(behind(tls_core, offline_settings, openhim_verify_tls=False))
        await link.wait_for(lambda: link.heartbeats >= 1, WAIT_S)
    assert "verification of the OpenHIM core is OFF" in caplog.text


async def test_channel_install_with_a_user_that_cannot_see_channels(core, offline_settings, start_mediator):
    core.add_user("mediator@example.org", "pw", may_view_channels=False)
    settings = behind(
        core,
        offline_settings,
        openhim_install_channels=True,
        openhim_username="mediator@example.org",
        openhim_password="pw",
    )
    _, first = await start_mediator(settings)
    await first.wait_for(lambda: first.channels_done, WAIT_S)
    assert list(core.channels) == ["Client Registry - FHIR Patient"]
    # the next start cannot see it, tries, gets the core's duplicate-name 500: it is there, done
    _, second = await start_mediator(settings)
    await second.wait_for(lambda: second.channels_done, WAIT_S)
    assert len(core.calls("POST", f"/mediators/{URN}/channels", status=500)) == 1
    assert second.channel_error is None and second.channels_installed == []
    assert list(core.channels) == ["Client Registry - FHIR Patient"] and second.registrations == 1


async def test_a_failed_channel_install_is_retried_with_backoff(core, offline_settings, start_mediator):
    core.fail_next_channel_installs = 2  # the core's database in trouble
    _, link = await start_mediator(behind(core, offline_settings, openhim_install_channels=True))
    await core.wait_for(lambda: bool(core.channels), WAIT_S)
    await link.wait_for(lambda: link.channels_done, WAIT_S)
    assert [c[2] for c in core.calls("POST", f"/mediators/{URN}/channels")] == [500, 500, 201]
    assert list(core.channels) == ["Client Registry - FHIR Patient"]
    assert link.channels_installed == ["Client Registry - FHIR Patient"] and link.channel_error is None
    assert link.heartbeats >= 1 and link.registrations == 1, "heartbeats went on meanwhile"


async def test_a_channel_install_refused_for_good_is_an_error_and_not_retried(
    core, offline_settings, start_mediator, caplog
):
    """The core holds this version's document with other channel names (changed without a version bump: the
    core keeps the old document): 400, which retrying cannot fix."""
    settings = behind(core, offline_settings, openhim_install_channels=True)
    old = load_registration(settings)
    old["defaultChannelConfig"] = [{**old["defaultChannelConfig"][0], "name": "Old name"}]
    core.mediators[URN] = old
    _, link = await start_mediator(settings)
    await link.wait_for(lambda: link.channels_done, WAIT_S)
    assert "400" in (link.channel_error or "") and "not found in the mediator config" in link.channel_error
    assert "refused the default channel" in caplog.text
    beats = link.heartbeats
    await link.wait_for(lambda: link.heartbeats >= beats + 5, WAIT_S)
    assert len(core.calls("POST", f"/mediators/{URN}/channels")) == 1 and not core.channels


# -- released core v8.5.0: the 'admin' group, not the role permissions of master -------------------------
@pytest.fixture
async def core_850():
    core = CoreEmulator(core_version="8.5.0")
    await core.start()
    yield core
    await core.stop()


async def test_core_850_refuses_an_api_user_outside_the_admin_group(
    core_850, offline_settings, start_mediator
):
    """On v8.5.0 a role with mediator-manage-all does not help (the permissions exist on master only)."""
    core_850.add_user("cr@example.org", "pw", groups=("client-registry",), roles=("mediator-manager",))
    settings = behind(core_850, offline_settings, openhim_username="cr@example.org", openhim_password="pw")
    _, link = await start_mediator(settings)
    await core_850.wait_for(lambda: len(core_850.calls("POST", "/mediators", status=403)) >= 2, WAIT_S)
    await link.wait_for(lambda: "is not an admin" in (link.last_error or ""), WAIT_S)
    assert "API access to addMediator denied" in (link.last_error or "")
    assert URN not in core_850.mediators and link.registrations == 0


async def test_core_850_serves_an_api_user_of_the_admin_group(core_850, offline_settings, start_mediator):
    core_850.add_user("cr@example.org", "pw", groups=("admin",), roles=())  # no role: master would say 403
    settings = behind(
        core_850,
        offline_settings,
        openhim_username="cr@example.org",
        openhim_password="pw",
        openhim_install_channels=True,
    )
    _, link = await start_mediator(settings)
    await link.wait_for(lambda: link.channels_done and link.heartbeats >= 2, WAIT_S)
    assert link.registrations == 1 and link.configs_applied == 1 and link.channel_error is None
    assert list(core_850.channels) == ["Client Registry - FHIR Patient"]


async def test_core_850_heartbeat_denied_names_remove_mediator(core_850):
    """The v8.5.0 source's copy-pasted function name in the heartbeat's 403, as a real core answers."""
    core_850.add_user("viewer@example.org", "pw", groups=("users",))
    auth = basic_header("viewer@example.org", "pw")
    async with aiohttp.ClientSession() as session:
        url = f"{core_850.url}/mediators/{quote(URN, safe='')}/heartbeat"
        async with session.post(url, json={"uptime": 1}, headers=auth) as resp:
            assert (resp.status, await resp.text()) == (
                403,
                "User viewer@example.org is not an admin, API access to removeMediator denied.",
            )
        async with session.get(f"{core_850.url}/channels", headers=auth) as resp:
            assert resp.status == 200 and await resp.json() == []


async def test_delete_mediator_makes_the_next_heartbeat_404(core, offline_settings, start_mediator):
    """As on the real core: DELETE /mediators/:urn, then a 404 heartbeat and a new registration."""
    _, link = await start_mediator(behind(core, offline_settings))
    await link.wait_for(lambda: link.heartbeats >= 1, WAIT_S)
    auth = basic_header(ROOT_EMAIL, ROOT_PASSWORD)
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{core.url}/mediators/{quote(URN, safe='')}", headers=auth) as resp,
    ):
        assert resp.status == 200 and "successfully removed" in await resp.text()
    await link.wait_for(lambda: link.registrations == 2, WAIT_S)
    assert core.heartbeats(URN, status=404)
