"""Admin authentication: POS credentials refused, sessions checked on every request, CSRF, the CLI."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from mediator.admin.users import MAX_SESSIONS, UserStore, _session_key
from mediator.app import create_app
from tests.admin.conftest import PASSWORD, AdminClient


async def _outcome(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    body = await resp.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome"
    return body


async def test_pos_client_is_refused_even_with_an_admin_session(admin):
    resp = await admin.client.get("/admin/api/queue", headers={"X-OpenHIM-ClientID": "clinic-a"})
    await _outcome(resp, 403)


async def test_no_session_gets_401_and_html_is_sent_to_login(app_client):
    await _outcome(await app_client.get("/admin/api/queue"), 401)
    await _outcome(await app_client.get("/admin/audit", params={"patient": "x"}), 401)
    resp = await app_client.get("/admin/", headers={"Accept": "text/html"}, allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/admin/login")


async def test_wrong_password_is_refused(app_client):
    resp = await app_client.post("/admin/api/login", json={"username": "alice", "password": "nope" * 4})
    await _outcome(resp, 401)
    resp = await app_client.post("/admin/api/login", json={"username": "mallory", "password": PASSWORD})
    await _outcome(resp, 401)


async def test_cookie_is_httponly_samesite_strict(app_client):
    resp = await app_client.post("/admin/api/login", json={"username": "alice", "password": PASSWORD})
    assert resp.status == 200
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie


async def test_state_change_without_csrf_token_is_refused_and_nothing_written(admin, pair, store):
    resp = await admin.client.post(f"/admin/api/pairs/{pair.task}/decision", json={"decision": "same-person"})
    await _outcome(resp, 403)
    resp = await admin.client.post(
        f"/admin/api/pairs/{pair.task}/decision",
        json={"decision": "same-person"},
        headers={"X-CSRF-Token": "forged"},
    )
    await _outcome(resp, 403)
    task = await store.read("Task", pair.task)
    assert task["status"] == "requested"


async def test_removed_user_session_stops_working(admin, admin_settings):
    assert (await admin.client.get("/admin/api/me")).status == 200
    UserStore(admin_settings.users_file).remove("alice")
    await _outcome(await admin.client.get("/admin/api/me"), 401)


async def test_logout_ends_the_session(admin):
    await admin.post("/admin/api/logout", {})
    await _outcome(await admin.client.get("/admin/api/me"), 401)


def _cookie(admin: AdminClient) -> dict[str, str]:
    """The admin's session cookie as a header, to replay it after the client's jar forgot it."""
    jar = admin.client.session.cookie_jar.filter_cookies(admin.client.make_url("/admin/api/me"))
    return {"Cookie": f"cr_admin={jar['cr_admin'].value}"}


async def test_logout_ends_the_session_even_when_its_cookie_is_replayed(
    admin, pair, store, aiohttp_client, settings
):
    replay = _cookie(admin)
    await admin.post("/admin/api/logout", {})
    await _outcome(await admin.client.get("/admin/api/me", headers=replay), 401)
    resp = await admin.client.post(
        f"/admin/api/pairs/{pair.task}/decision",
        json={"decision": "same-person"},
        headers={**replay, "X-CSRF-Token": admin.csrf},
    )
    await _outcome(resp, 401)
    assert (await store.read("Task", pair.task))["status"] == "requested"
    # another replica, or this one restarted: the same user file and key, nothing shared in memory
    other = await aiohttp_client(create_app(settings))
    await _outcome(await other.get("/admin/api/me", headers=replay), 401)


async def test_logout_ends_only_that_session(app_client, aiohttp_client, settings):
    first = await AdminClient(app_client).login()
    second = await AdminClient(await aiohttp_client(create_app(settings))).login()
    await first.post("/admin/api/logout", {})
    assert (await second.get("/admin/api/me"))["user"] == "alice"


async def test_new_password_ends_the_users_sessions_on_every_replica(
    admin, admin_settings, aiohttp_client, settings
):
    replica = await aiohttp_client(create_app(settings))
    alice_there = await AdminClient(replica).login()
    bob = await AdminClient(await aiohttp_client(create_app(settings))).login("bob")
    # what the CLI's create-user does for an existing name
    UserStore(admin_settings.users_file).set_password("alice", "a brand new passphrase")
    await _outcome(await admin.client.get("/admin/api/me"), 401)
    await _outcome(await alice_there.client.get("/admin/api/me"), 401)
    assert (await bob.get("/admin/api/me"))["user"] == "bob"
    again = await AdminClient(replica).login("alice", "a brand new passphrase")
    assert (await again.get("/admin/api/me"))["user"] == "alice"


def test_concurrent_session_writes_are_not_lost(tmp_path):
    """Logins on several replicas write the one user file at once: each keeps its session."""
    path = tmp_path / "users.json"
    UserStore(path).set_password("alice", PASSWORD)
    with ThreadPoolExecutor(8) as pool:  # a store per thread, as a store per replica
        ids = list(pool.map(lambda _: UserStore(path).start_session("alice", 3600), range(MAX_SESSIONS)))
    store = UserStore(path)
    assert all(store.session_open("alice", i) for i in ids)
    # the session that expires first: threads take their start time before they take the file's lock, so it
    # need not be the first one the pool started
    expiry = store.get("alice").sessions
    first = min(ids, key=lambda i: expiry[_session_key(i)])
    newest = store.start_session("alice", 3600)  # one more: the one that expires first ends
    assert store.session_open("alice", newest) and not store.session_open("alice", first)
    assert sum(store.session_open("alice", i) for i in ids) == MAX_SESSIONS - 1
    assert oct(path.stat().st_mode & 0o777) == "0o600"


async def test_second_login_gets_its_own_session(app_client, second_admin):
    alice = await AdminClient(app_client).login()
    assert alice.csrf != second_admin.csrf
    assert (await alice.get("/admin/api/me"))["user"] == "alice"
    assert (await second_admin.get("/admin/api/me"))["user"] == "bob"


def test_cli_creates_a_user_with_password_from_stdin(tmp_path):
    users = tmp_path / "users.json"
    env = {"CR_ADMIN_USERS_FILE": str(users), "CR_ADMIN_SECRET_KEY": "", "PATH": "/usr/bin:/bin"}
    env["CR_ADMIN_SECRET_FILE"] = str(tmp_path / "secret.key")
    run = subprocess.run(
        [sys.executable, "-m", "mediator.admin", "create-user", "carol"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    store = UserStore(users)
    assert store.verify("carol", "a long enough password") is not None
    assert store.verify("carol", "wrong password!!") is None
    assert "a long enough password" not in users.read_text()
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    short = subprocess.run(
        [sys.executable, "-m", "mediator.admin", "create-user", "dave"],
        input="short\n",
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert short.returncode == 2 and store.get("dave") is None
