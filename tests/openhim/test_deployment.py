"""docker-compose.yml wires the mediator with settings it really reads (it cannot be run in tests)."""

from __future__ import annotations

import ipaddress
import json
import re

import yaml

from mediator.settings import REPO_ROOT, Settings

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
KNOWN = set(
    re.findall(r'"(CR_[A-Z_]+)"', (REPO_ROOT / "mediator" / "settings.py").read_text(encoding="utf-8"))
)


def test_mediator_environment_names_are_settings_the_mediator_reads():
    env = COMPOSE["services"]["client-registry"]["environment"]
    assert set(env) <= KNOWN, set(env) - KNOWN


def test_mediator_settings_from_the_compose_environment():
    env = {k: str(v) for k, v in COMPOSE["services"]["client-registry"]["environment"].items()}
    env["CR_OPENHIM_PASSWORD"] = "secret"
    settings = Settings.from_env(env)
    assert settings.openhim_api_url == "https://openhim-core:8080"
    assert settings.openhim_verify_tls and settings.openhim_ca_file == "/certs/ca.crt"
    assert not settings.openhim_allow_anonymous
    doc = json.loads((REPO_ROOT / "mediator-config.json").read_text(encoding="utf-8"))
    assert settings.openhim_mediator_host in COMPOSE["services"]
    assert settings.port == settings.openhim_mediator_port == doc["endpoints"][0]["port"]
    hapi = COMPOSE["services"]["hapi-fhir"]["environment"]
    assert settings.hapi_base_url == f"http://hapi-fhir:{hapi['SERVER_PORT']}/fhir"


def test_the_image_and_compose_keep_the_mediators_state_on_a_writable_volume():
    """The mediator writes its admin users, session key and resumable jobs under var/ (``/app/var`` in the
    image) and nowhere else. The image runs as a non-root user and ``/app`` is root's, so var/ must be made
    that user's: without it the mediator stops at start-up (checked by hand on a read-only copy of the code:
    ``OSError`` on ``var/``). Compose keeps var/ on a named volume, so users and jobs outlive a re-created
    container."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    user = re.findall(r"^USER (\S+)", dockerfile, re.M)[-1]
    var = re.findall(r"^WORKDIR (\S+)", dockerfile, re.M)[-1] + "/var"
    runs = re.findall(r"^RUN (.+)$", dockerfile, re.M)
    assert any(f"mkdir -p {var}" in r and f"chown {user} {var}" in r for r in runs), runs
    mounts = [m.split(":") for m in COMPOSE["services"]["client-registry"]["volumes"]]
    assert [m[0] for m in mounts if m[1] == var and m[0] in COMPOSE["volumes"]], mounts


def test_core_and_console_images_and_core_certificate():
    services = COMPOSE["services"]
    assert services["openhim-core"]["image"].startswith("jembi/openhim-core:")
    assert services["openhim-console"]["image"].startswith("jembi/openhim-console:")
    core_env = services["openhim-core"]["environment"]
    assert json.loads(core_env["api_authenticationTypes"])[0] == "basic"
    assert core_env["mongo_url"].startswith("mongodb://mongo/")


def test_the_mediator_believes_x_forwarded_for_from_the_core_only():
    """Requests reach the mediator through the core, so without the core's address in
    ``CR_TRUSTED_PROXIES`` every AuditEvent would record the core instead of the point of service. The
    core has a fixed address on its network for that, and no other peer is trusted."""
    core = COMPOSE["services"]["openhim-core"]["networks"]["openhim"]["ipv4_address"]
    subnets = [c["subnet"] for c in COMPOSE["networks"]["openhim"]["ipam"]["config"]]
    assert any(ipaddress.ip_address(core) in ipaddress.ip_network(net) for net in subnets), (core, subnets)
    env = {k: str(v) for k, v in COMPOSE["services"]["client-registry"]["environment"].items()}
    env["CR_OPENHIM_PASSWORD"] = "secret"
    trusted = Settings.from_env(env).trusted_proxies
    assert trusted == (ipaddress.ip_network(core),), trusted
