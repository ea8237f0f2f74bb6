"""Security headers on every kind of answer, HSTS with Secure cookies, and a cookie-less request (what a
browser sends when a link on another site leads into /admin) never replacing an admin's session."""

from __future__ import annotations

import dataclasses

import aiohttp

from mediator.app import create_app
from mediator.handlers import FHIR_JSON
from tests.admin.conftest import PASSWORD


async def test_html_json_and_fhir_answers_carry_the_security_headers(admin):
    client = admin.client
    answers = {
        "page": await client.get("/admin/", headers={"Accept": "text/html"}),
        "login page": await client.get("/admin/login"),
        "admin json": await client.get("/admin/api/me"),
        "admin 401": await client.get("/admin/api/me", headers={"Cookie": "cr_admin=forged"}),
        "admin 403": await client.post("/admin/api/undo", json={}),  # no CSRF token
        "fhir": await client.get("/fhir/metadata"),
        "fhir 400": await client.post("/fhir/Patient", data=b"{", headers={"Content-Type": FHIR_JSON}),
        "404": await client.get("/nowhere"),
        "health": await client.get("/health"),
    }
    for name, resp in answers.items():
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", name
        assert resp.headers.get("Referrer-Policy") == "no-referrer", name
        assert "frame-ancestors 'none'" in resp.headers.get("Content-Security-Policy", ""), name
        assert "Strict-Transport-Security" not in resp.headers, name  # cookies are not Secure here
    for name in ("page", "login page"):
        csp = answers[name].headers["Content-Security-Policy"]
        assert "form-action 'self'" in csp and "base-uri 'none'" in csp, csp
    assert answers["fhir"].headers["Content-Security-Policy"].startswith("default-src 'none'")


async def test_hsts_when_the_admin_cookie_is_secure(aiohttp_client, settings, admin_settings):
    secure = dataclasses.replace(admin_settings, cookie_secure=True)
    client = await aiohttp_client(create_app(dataclasses.replace(settings, admin=secure)))
    resp = await client.post("/admin/api/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 200 and "Secure" in resp.headers["Set-Cookie"]
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    assert (await client.get("/admin/login")).headers["Strict-Transport-Security"].startswith("max-age=")


async def test_a_request_without_the_session_cookie_leaves_the_session_alone(admin):
    """A SameSite=Strict cookie is not sent when a link on another site opens /admin: the answers (the
    redirect to the login form, the form itself) must not set or delete it, or the link logs the admin out."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other_browser:
        url = admin.client.make_url("/admin/person/cr-x")
        async with other_browser.get(url, headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200 and resp.url.path == "/admin/login", resp.url  # via a 303
            set_cookies = [h for r in (*resp.history, resp) for h in r.headers.getall("Set-Cookie", [])]
            token = (await resp.text()).split('name="csrf_token" value="')[1].split('"')[0]
        assert not [c for c in set_cookies if c.startswith("cr_admin=")], set_cookies
        assert [c for c in set_cookies if "cr_admin_login=" in c and "Path=/admin/login" in c], set_cookies
        # that token, in its own cookie, still lets the login form log in
        form = {"username": "bob", "password": PASSWORD, "csrf_token": token, "next": "/admin/search"}
        async with other_browser.post(admin.client.make_url("/admin/login"), data=form) as resp:
            assert resp.status == 200 and resp.url.path == "/admin/search", resp.url
    assert (await admin.get("/admin/api/me"))["user"] == "alice"


async def test_a_cross_site_navigation_loads_the_page_again_same_site(app_client):
    """What Chromium sends for a link on another site: no cookie, ``Sec-Fetch-Site: cross-site``. The answer
    asks the browser to load the address again from this site (then with its cookie), and sets nothing."""
    headers = {"Accept": "text/html", "Sec-Fetch-Site": "cross-site"}
    resp = await app_client.get("/admin/person/cr-x?tab=1", headers=headers, allow_redirects=False)
    assert resp.status == 200 and "Set-Cookie" not in resp.headers
    assert '<meta http-equiv="refresh" content="0;url=/admin/person/cr-x?tab=1">' in await resp.text()
    # the same-site load that follows, still without a session, goes to the login form as before
    headers["Sec-Fetch-Site"] = "same-origin"
    resp = await app_client.get("/admin/person/cr-x?tab=1", headers=headers, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/admin/login?next=")
