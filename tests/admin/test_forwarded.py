"""Admin actions and the login rate limit use the client address submissions use (mediator/forwarded.py)."""

from __future__ import annotations

import dataclasses

from mediator.admin import ADMIN_APP
from mediator.admin.auth import THROTTLE
from mediator.admin.throttle import LoginThrottle
from mediator.app import create_app
from mediator.settings import proxy_networks
from tests.admin.conftest import PASSWORD, AdminClient, make_pair


async def test_admin_action_records_the_peer_not_a_forged_forwarded_for(admin, pair, store):
    resp = await admin.client.post(
        f"/admin/api/pairs/{pair.task}/decision",
        json={"decision": "different-people"},
        headers={"X-CSRF-Token": admin.csrf, "X-Forwarded-For": "203.0.113.9"},
    )
    assert resp.status == 200, await resp.text()
    [event] = await store.search("AuditEvent", {"entity": f"Task/{pair.task}"})
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"


async def test_behind_a_trusted_proxy_admin_actions_and_login_limits_follow_the_client(
    aiohttp_client, settings, admin_settings, facility, store
):
    app = create_app(dataclasses.replace(settings, trusted_proxies=proxy_networks("127.0.0.1")))
    client = await aiohttp_client(app)
    admin = await AdminClient(client).login()
    pair = await make_pair(client, facility)
    resp = await client.post(
        f"/admin/api/pairs/{pair.task}/decision",
        json={"decision": "different-people"},
        headers={"X-CSRF-Token": admin.csrf, "X-Forwarded-For": "203.0.113.9"},
    )
    assert resp.status == 200, await resp.text()
    [event] = await store.search("AuditEvent", {"entity": f"Task/{pair.task}"})
    assert event["agent"][0]["network"]["address"] == "203.0.113.9"
    # the per-address login limit counts the client behind the proxy, not the proxy
    vars(app[ADMIN_APP][THROTTLE]).update(vars(LoginThrottle(max_per_user=100, max_per_address=3)))

    async def login(address: str, password: str) -> int:
        body = {"username": "bob", "password": password}
        resp = await client.post("/admin/api/login", json=body, headers={"X-Forwarded-For": address})
        return resp.status

    assert [await login("198.51.100.1", "wrong" * 4) for _ in range(3)] == [401, 401, 401]
    assert await login("198.51.100.1", PASSWORD) == 429
    assert await login("198.51.100.2", PASSWORD) == 200
