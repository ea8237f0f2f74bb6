"""X-Forwarded-For is believed only from CR_TRUSTED_PROXIES; AuditEvents otherwise record the TCP peer."""

from __future__ import annotations

import dataclasses

import pytest

from mediator.app import create_app
from mediator.forwarded import resolve
from mediator.settings import Settings, proxy_networks
from tests.conftest import patient, unique_surname


async def _audited_address(client, store, facility: str, headers: dict[str, str]) -> str | None:
    resp = await client.post(
        "/fhir/Patient", json=patient(facility, unique_surname(), family=unique_surname()), headers=headers
    )
    assert resp.status == 201, await resp.text()
    events = await store.search("AuditEvent", {"entity": f"Patient/{(await resp.json())['id']}"})
    assert len(events) == 1
    return events[0]["agent"][0].get("network", {}).get("address")


async def test_forwarded_for_from_an_untrusted_peer_is_not_recorded(client, store, facility):
    spoofed = {"X-Forwarded-For": "203.0.113.9"}
    assert await _audited_address(client, store, facility, spoofed) == "127.0.0.1"


async def test_a_trusted_proxy_names_the_client(aiohttp_client, settings, store, facility):
    trusted = dataclasses.replace(settings, trusted_proxies=proxy_networks("127.0.0.1, 10.0.0.0/8"))
    client = await aiohttp_client(create_app(trusted))
    # the client wrote the first hop itself; 10.2.3.4 is a second trusted proxy: the client is 203.0.113.9
    chain = {"X-Forwarded-For": "198.51.100.1, 203.0.113.9, 10.2.3.4"}
    assert await _audited_address(client, store, facility, chain) == "203.0.113.9"
    assert await _audited_address(client, store, facility, {}) == "127.0.0.1"
    assert await _audited_address(client, store, facility, {"X-Forwarded-For": "<script>"}) == "127.0.0.1"


def test_resolve_walks_from_the_nearest_hop():
    nets = proxy_networks("10.0.0.0/8, fd00::/8")
    assert resolve("10.0.0.1", ["192.0.2.1"], nets) == "192.0.2.1"
    assert resolve("::ffff:10.0.0.1", ["192.0.2.1, 10.9.9.9"], nets) == "192.0.2.1"  # dual-stack socket
    assert resolve("fd00::1", ["2001:db8::7"], nets) == "2001:db8::7"
    assert resolve("10.0.0.1", ["192.0.2.1", "10.1.1.1"], nets) == "192.0.2.1"  # two header lines
    assert resolve("10.0.0.1", ["10.1.1.1"], nets) == "10.1.1.1"  # only proxies: the farthest one
    assert resolve("192.0.2.50", ["10.1.1.1"], nets) == "192.0.2.50"  # untrusted peer: header ignored
    assert resolve("192.0.2.50", [], ()) == "192.0.2.50"


def test_trusted_proxies_setting():
    nets = Settings.from_env({"CR_TRUSTED_PROXIES": " 10.0.0.5 , 172.16.0.0/12,fd00::/8"}).trusted_proxies
    assert [str(n) for n in nets] == ["10.0.0.5/32", "172.16.0.0/12", "fd00::/8"]
    assert Settings.from_env({}).trusted_proxies == ()
    with pytest.raises(ValueError, match=r"CR_TRUSTED_PROXIES.*'openhim-core'"):
        Settings.from_env({"CR_TRUSTED_PROXIES": "openhim-core"})
