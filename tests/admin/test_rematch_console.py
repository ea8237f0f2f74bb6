"""A re-match cannot make new rules live while the OpenHIM console sets its own rules text: that text wins on
every replica, so the applying replica alone would decide with the job's rules. The apply is refused (409,
saying what to do) until the console's rules text is emptied."""

from __future__ import annotations

import yaml

import matching
from mediator.app import create_app
from mediator.openhim import OPENHIM
from tests.admin.conftest import AdminClient
from tests.openhim.conftest import WAIT_S, behind, core  # noqa: F401  (core: the OpenHIM core emulator)

URN = "urn:mediator:client-registry"


async def test_rematch_apply_is_refused_while_the_console_sets_the_rules(
    core,  # noqa: F811
    settings,
    admin_settings,
    aiohttp_client,
):
    app = create_app(behind(core, settings))
    admin = await AdminClient(await aiohttp_client(app)).login()
    link = app[OPENHIM]
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    doc = matching.load_rules(settings.rules_path).to_dict()
    assert not link.console_sets_rules

    config = {**core.mediators[URN]["config"], "rules": yaml.safe_dump(doc, sort_keys=False)}
    assert await core.console_set_config(URN, config) == (200, "")
    await link.wait_for(lambda: link.configs_applied == 2, WAIT_S)
    assert link.console_sets_rules
    refused = await admin.post("/admin/jobs/rematch/apply", {"rules": doc}, status=409)
    assert "OpenHIM console" in refused["issue"][0]["diagnostics"]

    assert await core.console_set_config(URN, {**config, "rules": ""}) == (200, "")
    await link.wait_for(lambda: link.configs_applied == 3, WAIT_S)
    assert not link.console_sets_rules  # emptied: the rules in effect again, a re-match may be applied
