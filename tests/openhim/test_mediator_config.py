"""mediator-config.json: valid for the core, consistent with the package, complete for the console."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib

import pytest

from matching import load_rules
from mediator.openhim_config import ConsoleConfigError, live_config, load_registration
from mediator.settings import REPO_ROOT, Settings
from tests.openhim_emulator import ValidationError, validate_config, validate_registration

DOC = json.loads((REPO_ROOT / "mediator-config.json").read_text(encoding="utf-8"))


def test_version_is_the_package_version():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert DOC["version"] == project["version"]


def test_document_and_seeded_registration_pass_the_cores_validation():
    validate_registration(DOC)
    settings = Settings(client_systems={"pos-a": ("http://a.example.org/mrn",)}, hapi_timeout_s=7)
    doc = load_registration(settings)
    validate_registration(doc)
    assert doc["config"]["clientSystems"] == {"pos-a": "http://a.example.org/mrn"}
    assert doc["config"]["hapiTimeoutSeconds"] == 7
    rules = load_rules(settings.rules_path)
    assert doc["config"]["autoMatchThreshold"] == rules.auto_threshold, "the console shows the rules' values"
    assert doc["config"]["potentialMatchThreshold"] == rules.potential_threshold
    assert doc["config"]["overrideThresholds"] is False


def test_the_emulators_validation_can_fail():
    bad_number = {**DOC, "config": {**DOC["config"], "maxCandidates": "500"}}
    with pytest.raises(ValidationError, match="maxCandidates to be a number"):
        validate_registration(bad_number)
    with pytest.raises(ValidationError, match="No config definition found for parameter nope"):
        validate_config(DOC["configDefs"], {"nope": 1})
    with pytest.raises(ValidationError, match="SemVer"):
        validate_registration({**DOC, "version": "1.0"})


def test_default_channel_routes_fhir_patient_and_bundles_to_the_mediator():
    (channel,) = DOC["defaultChannelConfig"]
    pattern = re.compile(channel["urlPattern"])  # the core tests urlPattern as a RegExp on the path
    for path in ("/fhir", "/fhir/", "/fhir/Patient", "/fhir/Patient/abc", "/fhir/Patient/$ihe-pix"):
        assert pattern.search(path), path
    for path in ("/fhir/Observation", "/fhirx", "/admin"):
        assert not pattern.search(path), path
    (route,) = channel["routes"]
    assert route["primary"] is True and route["port"] == DOC["endpoints"][0]["port"] == 3000
    assert set(channel["methods"]) >= {"GET", "POST", "PUT", "DELETE"}


def test_registration_rewrites_the_address_the_core_uses():
    doc = load_registration(Settings(openhim_mediator_host="cr.internal", openhim_mediator_port=3100))
    routes = [*doc["endpoints"], *doc["defaultChannelConfig"][0]["routes"]]
    assert {(r["host"], r["port"]) for r in routes} == {("cr.internal", 3100)}


def test_every_config_param_changes_what_the_mediator_runs_with():
    """Each configDef is read by live_config: changing it changes the live config."""
    settings = Settings()
    base = {**load_registration(settings)["config"], "autoMatchThreshold": 30}  # not in force: no override
    reference = live_config(base, settings)
    assert reference.registry.rules.auto_threshold == load_rules(settings.rules_path).auto_threshold != 30
    changes = {
        "hapiBaseUrl": "http://elsewhere:8080/fhir",
        "hapiTimeoutSeconds": 99,
        "hapiConnectTimeoutSeconds": 9,
        "cruidSystem": "urn:example:cruid",
        "sharedIdentifierSystems": ["urn:example:nid"],
        "clientSystems": {"pos-a": "urn:a urn:a2"},
        "overrideThresholds": True,
        "autoMatchThreshold": 30,
        "potentialMatchThreshold": -5,
        "rules": (REPO_ROOT / "rules" / "default.yaml").read_text().replace("name: default", "name: edited"),
        "maxCandidates": 7,
    }
    assert set(changes) == {d["param"] for d in DOC["configDefs"]} == set(DOC["config"])
    for param, value in changes.items():
        config = {**base, param: value}
        if param in ("autoMatchThreshold", "potentialMatchThreshold"):
            config["overrideThresholds"] = True
        live = live_config(config, settings)
        assert live != reference, param
    both = live_config({**base, "overrideThresholds": True, "potentialMatchThreshold": -5}, settings)
    assert (both.registry.rules.auto_threshold, both.registry.rules.potential_threshold) == (30, -5)
    assert live_config(
        {**base, "clientSystems": {"pos-a": "urn:a, urn:a2"}}, settings
    ).registry.client_systems == {"pos-a": frozenset({"urn:a", "urn:a2"})}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"hapiBaseUrl": "hapi:8080"}, "hapiBaseUrl"),
        ({"hapiTimeoutSeconds": 0}, "hapiTimeoutSeconds"),
        ({"clientSystems": {"pos-a": " "}}, "clientSystems.pos-a"),
        (
            {"overrideThresholds": True, "autoMatchThreshold": 1, "potentialMatchThreshold": 5},
            "potential_match",
        ),
        ({"rules": "name: [unclosed"}, "not valid YAML"),
        ({"rules": "name: x\n"}, "rules: "),
        ({"maxCandidates": 2.5}, "maxCandidates"),
        ({"cruidSystem": ""}, "cruidSystem"),
    ],
)
def test_invalid_console_config_is_refused_with_the_reason(change, problem):
    settings = Settings()
    config = {**load_registration(settings)["config"], **change}
    with pytest.raises(ConsoleConfigError) as caught:
        live_config(config, settings)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_all_problems_are_reported_together():
    settings = dataclasses.replace(Settings())
    config = {**load_registration(settings)["config"], "hapiBaseUrl": "x", "maxCandidates": 0}
    with pytest.raises(ConsoleConfigError) as caught:
        live_config(config, settings)
    assert len(caught.value.problems) == 2
