"""Login rate limiting (per user, per address, bounded memory) and HTML error pages for GET page routes."""

from __future__ import annotations

import pytest

from mediator.admin import ADMIN_APP
from mediator.admin.auth import THROTTLE
from mediator.admin.throttle import LoginThrottle, TooManyAttempts
from tests.admin.conftest import PASSWORD


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(app_client, **limits) -> Clock:
    """The running app's throttle, reset with these limits and a clock the test moves."""
    clock = Clock()
    fresh = LoginThrottle(clock=clock, **limits)
    vars(app_client.server.app[ADMIN_APP][THROTTLE]).update(vars(fresh))
    return clock


async def _login(app_client, user: str, password: str):
    return await app_client.post("/admin/api/login", json={"username": user, "password": password})


async def test_failed_logins_lock_the_user_then_the_window_frees_it(app_client):
    clock = _throttle(app_client, max_per_user=3, max_per_address=100, window_s=60)
    for _ in range(3):
        assert (await _login(app_client, "alice", "wrong" * 4)).status == 401
    locked = await _login(app_client, "ALICE", PASSWORD)  # even the right password, any case
    assert locked.status == 429 and 0 < int(locked.headers["Retry-After"]) <= 60
    body = await locked.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "throttled"
    assert (await _login(app_client, "bob", PASSWORD)).status == 200  # another user is not affected
    clock.now += 61
    assert (await _login(app_client, "alice", PASSWORD)).status == 200
    # the HTML form says so too
    page = await app_client.get("/admin/login")
    text = await page.text()
    token = text.split('name="csrf_token" value="')[1].split('"')[0]
    for _ in range(3):
        await app_client.post(
            "/admin/login", data={"username": "alice", "password": "x", "csrf_token": token}
        )
    form = await app_client.post(
        "/admin/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token}
    )
    assert form.status == 429 and "Too many failed logins" in await form.text()
    assert form.headers["Content-Type"].startswith("text/html")


async def test_failed_logins_lock_the_address_across_user_names(app_client):
    _throttle(app_client, max_per_user=100, max_per_address=4, window_s=60)
    for n in range(4):
        assert (await _login(app_client, f"guess{n}", "wrong" * 4)).status == 401
    assert (await _login(app_client, "alice", PASSWORD)).status == 429


async def test_memory_is_bounded_and_success_clears_the_user():
    clock = Clock()
    throttle = LoginThrottle(max_per_user=2, max_per_address=10**9, window_s=60, max_keys=100, clock=clock)
    for n in range(10_000):
        await throttle.failed(f"user{n}", f"10.0.{n // 256}.{n % 256}")
    assert len(throttle.users.times) == 100 and len(throttle.addresses.times) == 100
    assert all(len(times) <= 2 for times in throttle.users.times.values())
    await throttle.failed("user9999", "x")
    with pytest.raises(TooManyAttempts):
        await throttle.check("user9999", "y")
    await throttle.succeeded("user9999")
    await throttle.check("user9999", "y")  # no exception


async def test_page_errors_are_html_and_api_errors_stay_json(admin):
    page = await admin.client.get("/admin/person/cr-does-not-exist")
    assert page.status == 404 and page.headers["Content-Type"].startswith("text/html")
    text = await page.text()
    assert "Not found (404)" in text and "cr-does-not-exist" in text and "<form" in text  # layout with nav
    unknown = await admin.client.get("/admin/no-such-page")
    assert unknown.status == 404 and unknown.headers["Content-Type"].startswith("text/html")
    bad = await admin.client.get("/admin/", params={"kind": "nonsense"})
    assert bad.status == 400 and "kind must be one of" in await bad.text()
    api = await admin.client.get("/admin/api/golden/cr-does-not-exist")
    assert api.status == 404
    assert (await api.json(content_type=None))["resourceType"] == "OperationOutcome"
    audit = await admin.client.get("/admin/audit", params={"patient": "cr-does-not-exist"})
    assert audit.status == 404 and (await audit.json(content_type=None))["resourceType"] == "OperationOutcome"
