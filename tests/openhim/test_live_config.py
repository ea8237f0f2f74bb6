"""Config edited in the console reaches the running mediator on the next heartbeat, or is refused."""

from __future__ import annotations

from matching import load_rules
from mediator.context import CONFIG, STORE
from tests.openhim.conftest import WAIT_S, behind

URN = "urn:mediator:client-registry"


async def _registered(core, offline_settings, start_mediator, **changes):
    client, link = await start_mediator(behind(core, offline_settings, **changes))
    await link.wait_for(lambda: link.configs_applied == 1, WAIT_S)
    return client.server.app, link


async def test_console_edit_is_applied_live(core, offline_settings, start_mediator):
    app, link = await _registered(core, offline_settings, start_mediator)
    before = app[CONFIG].current
    assert before.rules.auto_threshold == load_rules(offline_settings.rules_path).auto_threshold != 20
    assert before.open_mode

    config = {
        **core.mediators[URN]["config"],
        "overrideThresholds": True,
        "autoMatchThreshold": 20,
        "potentialMatchThreshold": 5,
        "clientSystems": {"pos-a": "http://a.example.org/mrn", "pos-b": "http://b.example.org/mrn"},
        "hapiBaseUrl": "http://hapi.example.org:8080/fhir/",
        "hapiTimeoutSeconds": 4,
    }
    assert await core.console_set_config(URN, config) == (200, "")
    await link.wait_for(lambda: link.configs_applied == 2, WAIT_S)

    now = app[CONFIG].current
    assert (now.rules.auto_threshold, now.rules.potential_threshold) == (20, 5)
    assert now.client_systems == {
        "pos-a": frozenset({"http://a.example.org/mrn"}),
        "pos-b": frozenset({"http://b.example.org/mrn"}),
    }
    assert app[STORE].hapi.base_url == "http://hapi.example.org:8080/fhir"
    assert app[STORE].hapi._timeout.total == 4
    # delivered once: the heartbeats after it carry nothing new
    beats = len(core.heartbeats(URN))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= beats + 3, WAIT_S)
    assert link.configs_applied == 2 and app[CONFIG].current is now


async def test_invalid_config_is_refused_and_the_old_one_kept(core, offline_settings, start_mediator, caplog):
    app, link = await _registered(core, offline_settings, start_mediator)
    before = app[CONFIG].current
    config = {
        **core.mediators[URN]["config"],
        "overrideThresholds": True,
        "autoMatchThreshold": 1,
        "potentialMatchThreshold": 9,  # the core accepts numbers; the mediator knows better
        "rules": "",
    }
    assert (await core.console_set_config(URN, config))[0] == 200
    await link.wait_for(lambda: len(link.config_errors) == 1, WAIT_S)
    assert any("potential_match" in p for p in link.config_errors[0])
    assert app[CONFIG].current is before
    assert "console config refused" in caplog.text

    # a valid edit afterwards is applied: the mediator did not get stuck
    fixed = {**config, "potentialMatchThreshold": 0}
    assert (await core.console_set_config(URN, fixed))[0] == 200
    await link.wait_for(lambda: link.configs_applied == 2, WAIT_S)
    assert app[CONFIG].current.rules.auto_threshold == 1


async def test_invalid_rules_yaml_is_refused_with_every_problem(core, offline_settings, start_mediator):
    app, link = await _registered(core, offline_settings, start_mediator)
    before = app[CONFIG].current
    config = {
        **core.mediators[URN]["config"],
        "rules": "name: broken\nthresholds: {auto_match: high}\nbogus: 1\n",
    }
    assert (await core.console_set_config(URN, config))[0] == 200
    await link.wait_for(lambda: len(link.config_errors) == 1, WAIT_S)
    problems = link.config_errors[0]
    assert any("thresholds" in p for p in problems) and any("bogus" in p for p in problems)
    assert app[CONFIG].current is before


async def test_the_core_itself_refuses_ill_typed_config(core, offline_settings, start_mediator):
    _, link = await _registered(core, offline_settings, start_mediator)
    stored = core.mediators[URN]["config"]
    status, text = await core.console_set_config(URN, {**stored, "hapiTimeoutSeconds": "ten"})
    assert (status, text) == (400, "Expected config param hapiTimeoutSeconds to be a number.")
    status, text = await core.console_set_config(URN, {**stored, "clientSystems": {"pos-a": ["x"]}})
    assert status == 400 and "only contain string values" in text
    assert core.mediators[URN]["config"] == stored
    beats = len(core.heartbeats(URN))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= beats + 2, WAIT_S)
    assert link.configs_applied == 1 and not link.config_errors


async def test_config_edit_while_the_mediator_was_away_arrives_at_its_start(
    core, offline_settings, start_mediator
):
    await _registered(core, offline_settings, start_mediator)
    config = {**core.mediators[URN]["config"], "maxCandidates": 77}
    assert (await core.console_set_config(URN, config))[0] == 200
    app, _ = await _registered(core, offline_settings, start_mediator)
    assert app[CONFIG].current.max_candidates == 77


async def test_heartbeat_answer_ok_means_no_config(core, offline_settings, start_mediator):
    """A mediator document without config: Koa answers the body-less 200 as "OK" (not a config)."""
    app, link = await _registered(core, offline_settings, start_mediator)
    before = app[CONFIG].current
    core.mediators[URN]["config"] = None
    core.mediators[URN]["_configModifiedTS"] = core.mediators[URN]["_lastHeartbeat"] + 3600  # "edited"
    beats = len(core.heartbeats(URN))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= beats + 3, WAIT_S)
    assert link.configs_applied == 1 and link.config_errors == []
    assert link.last_error is None and link.registrations == 1, "no error, no start-over"
    assert app[CONFIG].current is before


async def test_every_replica_gets_a_console_edit(core, offline_settings, start_mediator):
    """The core hands an edit only to the first heartbeat after it (``_configModifiedTS > _lastHeartbeat``);
    replicas share one urn, so each heartbeat asks for the config and a replica applies it when it changed."""
    one, first = await _registered(core, offline_settings, start_mediator)
    two, second = await _registered(core, offline_settings, start_mediator)
    config = {**core.mediators[URN]["config"], "maxCandidates": 66}
    assert (await core.console_set_config(URN, config))[0] == 200
    await first.wait_for(lambda: first.configs_applied == 2, WAIT_S)
    await second.wait_for(lambda: second.configs_applied == 2, WAIT_S)
    assert one[CONFIG].current.max_candidates == two[CONFIG].current.max_candidates == 66
    beats = len(core.heartbeats(URN))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= beats + 6, WAIT_S)
    assert first.configs_applied == second.configs_applied == 2, "applied once each"


async def test_a_refused_config_is_reported_once_while_it_stays(core, offline_settings, start_mediator):
    _, link = await _registered(core, offline_settings, start_mediator)
    config = {**core.mediators[URN]["config"], "maxCandidates": 0}
    assert (await core.console_set_config(URN, config))[0] == 200
    await link.wait_for(lambda: len(link.config_errors) == 1, WAIT_S)
    beats = len(core.heartbeats(URN))
    await core.wait_for(lambda: len(core.heartbeats(URN)) >= beats + 4, WAIT_S)
    assert len(link.config_errors) == 1
