"""End to end in headless Chromium (Debian's ``chromium`` driven by Playwright; no browser download):
log in, open the queue, review a pair, decide it, see the audit entry. Screenshot: <tmp_path>/pair.png."""

from __future__ import annotations

import shutil
import time

import pytest

from mediator.app import create_app
from tests.admin.conftest import PASSWORD, make_pair

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian package chromium not installed (scripts/setup)"
)


async def test_admin_decides_a_pair_in_the_browser(
    aiohttp_server, aiohttp_client, settings, admin_settings, facility, tmp_path, store
):
    from playwright.async_api import async_playwright

    started = time.perf_counter()
    server = await aiohttp_server(create_app(settings))
    pos = await aiohttp_client(server)
    pair = await make_pair(pos, facility)
    base = str(server.make_url("")).rstrip("/")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            # bounded waits for page loads; 30 s (the default) was not enough once on 2 busy cores
            page.set_default_timeout(90_000)
            await page.goto(f"{base}/admin/")
            assert page.url.startswith(f"{base}/admin/login")  # no session: sent to the login page
            # keyboard only: the user field gets focus (autofocus is applied after the load event,
            # so typing straight away on busy cores lost the first keys once; wait for it)
            await page.wait_for_function("document.activeElement?.id === 'username'")
            await page.keyboard.type("alice")
            await page.keyboard.press("Tab")
            await page.keyboard.type(PASSWORD)
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            alert = page.locator("[role=alert]")
            assert page.url == f"{base}/admin/", (
                page.url,
                await alert.all_inner_texts(),
            )
            assert await page.locator("h1").inner_text() == "Potential matches"

            await page.fill("#system", pair.system_b)
            await page.click("text=Filter")
            await page.wait_for_load_state()
            rows = page.locator("table tbody tr")
            assert await rows.count() == 1
            await page.click("text=Review pair")
            await page.wait_for_url(f"{base}/admin/pairs/{pair.task}")
            family_row = page.locator("tr", has=page.locator("strong", has_text="family"))
            assert "agree" in await family_row.inner_text()
            assert (
                "missing"
                in await page.locator("tr", has=page.locator("strong", has_text="phone")).inner_text()
            )
            await page.screenshot(path=str(tmp_path / "pair.png"), full_page=True)

            await page.click("text=Same person…")
            await page.wait_for_selector("text=Please confirm")
            await page.fill("#note", "same mother's name and village")
            await page.click("button:has-text('Confirm')")
            await page.wait_for_selector("text=Done — recorded as AuditEvent")
            history = await page.locator("#history + table").inner_text()
            assert "same-person (admin)" in history and "alice" in history
            assert "same mother's name and village" in history

            # the queue no longer shows the pair
            await page.goto(f"{base}/admin/?system={pair.system_b}")
            assert await page.locator("table tbody tr").count() == 0
        finally:
            await browser.close()
    task = await store.read("Task", pair.task)
    assert task["status"] == "completed"
    print(f"browser test: {time.perf_counter() - started:.1f} s")


async def test_a_link_from_another_site_does_not_log_the_admin_out(aiohttp_server, settings, admin_settings):
    """The session cookie is SameSite=Strict, so Chromium does not send it when a page on another site links
    into /admin; the answers to that cookie-less request must leave the session as it is."""
    from aiohttp import web
    from playwright.async_api import async_playwright

    server = await aiohttp_server(create_app(settings))
    base = str(server.make_url("")).rstrip("/")  # http://127.0.0.1:port

    async def other_site(request: web.Request) -> web.Response:
        link = f'<a id="go" href="{base}/admin/search">registry</a>'
        return web.Response(text=f"<!doctype html><title>elsewhere</title>{link}", content_type="text/html")

    elsewhere_app = web.Application()
    elsewhere_app.router.add_get("/", other_site)
    elsewhere = await aiohttp_server(elsewhere_app)
    elsewhere_url = f"http://localhost:{elsewhere.port}/"  # another site than 127.0.0.1

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            page.set_default_timeout(90_000)
            await page.goto(f"{base}/admin/login")
            await page.fill("#username", "alice")
            await page.fill("#password", PASSWORD)
            async with page.expect_navigation():
                await page.click("button:has-text('Log in')")
            assert await page.locator("h1").inner_text() == "Potential matches"

            await page.goto(elsewhere_url)
            await page.click("#go")
            # no cookie with the cross-site request: the page loads itself again, same-site, with it
            await page.wait_for_url(f"{base}/admin/search")
            await page.wait_for_selector("h1:has-text('Search')")

            await page.goto(f"{base}/admin/")  # typed or bookmarked
            assert await page.locator("h1").inner_text() == "Potential matches", page.url
        finally:
            await browser.close()
