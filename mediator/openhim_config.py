"""The mediator's registration document and its console-editable config.

``mediator-config.json`` is what ``POST /mediators`` sends, its ``config`` seeded with this process's
start-up settings; a config delivered on a heartbeat (:func:`live_config`) is checked here in full and
turned into a new :class:`RegistryConfig` plus HAPI settings, every problem reported at once in
:class:`ConsoleConfigError` (the caller keeps the old config). Details: ``docs/internals.md``.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from matching import RulesError, load_rules

from .config import RegistryConfig
from .settings import Settings
from .store import HapiTarget


class ConsoleConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid mediator config: " + "; ".join(problems))


@dataclass(frozen=True)
class LiveConfig:
    registry: RegistryConfig
    hapi: HapiTarget


def load_registration(settings: Settings) -> dict[str, Any]:
    """The ``POST /mediators`` body: the JSON file, with config seeded from settings and our address."""
    doc: dict[str, Any] = json.loads(Path(settings.mediator_config_path).read_text(encoding="utf-8"))
    doc = copy.deepcopy(doc)
    config = doc.setdefault("config", {})
    config.update(settings_as_console_config(settings))
    routes = [*doc.get("endpoints", [])]
    for channel in doc.get("defaultChannelConfig", []):
        routes.extend(channel.get("routes", []))
    for route in routes:
        if settings.openhim_mediator_host:
            route["host"] = settings.openhim_mediator_host
        if settings.openhim_mediator_port:
            route["port"] = settings.openhim_mediator_port
    return doc


def settings_as_console_config(settings: Settings) -> dict[str, Any]:
    rules = load_rules(settings.rules_path)  # the thresholds in force, shown while not overridden
    return {
        "autoMatchThreshold": rules.auto_threshold,
        "potentialMatchThreshold": rules.potential_threshold,
        "hapiBaseUrl": settings.hapi_base_url,
        "hapiTimeoutSeconds": settings.hapi_timeout_s,
        "hapiConnectTimeoutSeconds": settings.hapi_connect_timeout_s,
        "cruidSystem": settings.cruid_system,
        "sharedIdentifierSystems": list(settings.shared_identifier_systems),
        "clientSystems": {k: " ".join(v) for k, v in settings.client_systems.items()},
        "maxCandidates": settings.max_candidates,
    }


_SPLIT = re.compile(r"[\s,]+")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _system(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and not _SPLIT.search(value.strip())


def live_config(
    config: Any, settings: Settings, applied_rules: Mapping[str, Any] | None = None
) -> LiveConfig:
    """Check a console config completely and build what the mediator runs with. Missing keys = settings.

    An empty console ``rules`` means the rules in effect: ``applied_rules`` (the rules a re-match applied,
    :mod:`mediator.applied_rules`) if given, else the ``CR_RULES`` file.
    """
    problems: list[str] = []
    if not isinstance(config, Mapping):
        raise ConsoleConfigError(["the config must be a JSON object"])
    get = config.get

    hapi_url = get("hapiBaseUrl", settings.hapi_base_url)
    if not isinstance(hapi_url, str) or urlsplit(hapi_url).scheme not in ("http", "https"):
        problems.append("hapiBaseUrl: must be an http(s) URL")
    timeouts: dict[str, float] = {}
    for key, default in (
        ("hapiTimeoutSeconds", settings.hapi_timeout_s),
        ("hapiConnectTimeoutSeconds", settings.hapi_connect_timeout_s),
    ):
        value = get(key, default)
        if not _number(value) or not 0 < value <= 600:
            problems.append(f"{key}: must be a number of seconds above 0 and at most 600")
        timeouts[key] = value

    cruid_system = get("cruidSystem", settings.cruid_system)
    if not _system(cruid_system):
        problems.append("cruidSystem: must be a non-empty identifier system URI")

    shared = get("sharedIdentifierSystems", list(settings.shared_identifier_systems))
    if not isinstance(shared, list) or not all(_system(s) for s in shared):
        problems.append("sharedIdentifierSystems: must be a list of identifier system URIs")
        shared = []

    raw_clients = get("clientSystems", {k: " ".join(v) for k, v in settings.client_systems.items()})
    client_systems: dict[str, frozenset[str]] = {}
    if not isinstance(raw_clients, Mapping):
        problems.append("clientSystems: must map client IDs to identifier systems")
        raw_clients = {}
    for client, systems in raw_clients.items():
        if not isinstance(systems, str) or not systems.strip():
            problems.append(f"clientSystems.{client}: must list at least one identifier system")
            continue
        client_systems[str(client)] = frozenset(s for s in _SPLIT.split(systems.strip()) if s)
    if isinstance(cruid_system, str):
        for client, systems in client_systems.items():
            if cruid_system in systems:
                problems.append(f"clientSystems.{client}: the CRUID system is assigned by the registry only")

    max_candidates = get("maxCandidates", settings.max_candidates)
    if not _number(max_candidates) or max_candidates != int(max_candidates) or max_candidates < 1:
        problems.append("maxCandidates: must be a whole number of at least 1")

    rules_problems: list[str] = []
    rules = None
    try:
        rules = _rules(config, settings, rules_problems, applied_rules)
    except RulesError as exc:
        rules_problems.extend(f"rules: {p}" for p in exc.problems)
    problems.extend(rules_problems)

    if problems or rules is None:
        raise ConsoleConfigError(problems or ["rules: invalid"])
    return LiveConfig(
        registry=RegistryConfig(
            rules=rules,
            cruid_system=cruid_system.strip(),
            shared_identifier_systems=frozenset(s.strip() for s in shared),
            client_systems=client_systems,
            max_candidates=int(max_candidates),
        ),
        hapi=HapiTarget(
            base_url=hapi_url.rstrip("/"),
            timeout_s=float(timeouts["hapiTimeoutSeconds"]),
            connect_timeout_s=float(timeouts["hapiConnectTimeoutSeconds"]),
        ),
    )


def _rules(
    config: Mapping[str, Any],
    settings: Settings,
    problems: list[str],
    applied_rules: Mapping[str, Any] | None = None,
) -> Any:
    text = config.get("rules", "")
    base = Path(settings.rules_path).parent
    if not isinstance(text, str):
        problems.append("rules: must be a YAML text (or empty for the rules file)")
        return None
    use_applied = not text.strip() and applied_rules is not None
    if use_applied and applied_rules is not None:
        text = yaml.safe_dump(copy.deepcopy(dict(applied_rules)), sort_keys=False)
    elif not text.strip():
        try:
            text = Path(settings.rules_path).read_text(encoding="utf-8")
        except OSError as exc:
            problems.append(f"rules: cannot read the rules file {settings.rules_path}: {exc.strerror}")
            return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problems.append(f"rules: {where}not valid YAML")
        return None
    if not isinstance(doc, dict):
        problems.append("rules: must be a YAML mapping (see rules/default.yaml)")
        return None
    if (
        isinstance(doc.get("aliases"), list) and not use_applied
    ):  # alias CSV paths are relative to the rules file's folder
        doc["aliases"] = [str(base / str(a)) for a in doc["aliases"]]

    override = config.get("overrideThresholds", False)
    if not isinstance(override, bool):
        problems.append("overrideThresholds: must be true or false")
    elif override:
        auto = config.get("autoMatchThreshold")
        potential = config.get("potentialMatchThreshold")
        if not _number(auto) or not _number(potential):
            problems.append("autoMatchThreshold/potentialMatchThreshold: must be numbers")
            return None
        doc["thresholds"] = {"auto_match": auto, "potential_match": potential}
    if problems:
        return None
    return load_rules(doc)
