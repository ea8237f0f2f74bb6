"""Admin authentication: the session cookie (Fernet), CSRF tokens, and the checks every admin request
passes (a POS client is refused, the session must be open in the user file, a POST must carry the CSRF
token). How the cookies behave and why: ``docs/internals.md`` (Admin sessions).
"""

from __future__ import annotations

import hmac
import html
import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.fernet import Fernet, InvalidToken

from ..errors import Forbidden, RegistryError
from ..forwarded import client_address
from ..settings import AdminSettings, Settings
from .throttle import Throttle
from .users import UserStore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
COOKIE = "cr_admin"
LOGIN_COOKIE, LOGIN_PATH = "cr_admin_login", "/admin/login"  # the login form's CSRF token, before a session


class Session(dict[str, object]):
    """The cookie's content; written back only when changed."""

    changed = False
    invalid = False

    def __setitem__(self, key: str, value: object) -> None:
        super().__setitem__(key, value)
        self.changed = True

    def invalidate(self) -> None:
        self.clear()
        self.changed = self.invalid = True


SESSION = web.RequestKey("admin_session", Session)
ADMIN_USER = web.RequestKey("admin_user", str)
ADMIN_CSRF = web.RequestKey("admin_csrf", str)
USERS = web.AppKey("admin_users", UserStore)
THROTTLE = web.AppKey("admin_login_throttle", Throttle)


class Unauthorized(RegistryError):
    status = 401
    code = "login"


def with_secret_key(settings: Settings) -> Settings:
    """``settings`` with the admin session key: ``CR_ADMIN_SECRET_KEY`` if given, else the key kept in
    ``CR_ADMIN_SECRET_FILE`` (``var/admin-secret.key``), generated there on first use. For the process's entry
    points (``python -m mediator``, ``python -m mediator.admin``): an app never writes it."""
    if settings.admin.secret_key is not None:
        return settings
    key = _stored_key(settings.admin.secret_file)
    Fernet(key)  # fails early on a malformed key
    return replace(settings, admin=replace(settings.admin, secret_key=key))


def _stored_key(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process wrote it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def csrf_token(session: Session) -> str:
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return str(token)


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "") and not request.path.startswith("/admin/api/")


PUBLIC = {("GET", "/admin/login"), ("POST", "/admin/login"), ("POST", "/admin/api/login")}


def _load_session(request: web.Request) -> Session:
    """The logged-in session (cookie ``cr_admin``), else the login form's state (``cr_admin_login``)."""
    data = _read_cookie(request, COOKIE)
    if data.get("user"):
        return Session(data)
    return Session(_read_cookie(request, LOGIN_COOKIE))


def _read_cookie(request: web.Request, name: str) -> dict[str, object]:
    settings = request.app[ADMIN_SETTINGS]
    raw = request.cookies.get(name)
    if raw:
        try:
            data = json.loads(request.app[SESSION_KEY].decrypt(raw, ttl=settings.session_max_age_s))
            if isinstance(data, dict):
                return data
        except (InvalidToken, ValueError):
            pass
    return {}


def _save_session(request: web.Request, session: Session, response: web.StreamResponse) -> None:
    """Only a login writes ``cr_admin``, and only a request that sent it deletes it (logout, or a session
    that is over). A browser follows a link from another site without its SameSite=Strict cookie: the answer
    to such a request must not replace or delete the admin's session, so anything an anonymous request keeps
    (the login form's CSRF token) goes into ``cr_admin_login``, sent to the login form only."""
    if not session.changed or response.prepared:
        return
    if session.get("user"):
        _set_cookie(request, response, COOKIE, session, "/admin")
        return
    if session.invalid and COOKIE in request.cookies:
        response.del_cookie(COOKIE, path="/admin", **_cookie_flags(request))
    if session:
        _set_cookie(request, response, LOGIN_COOKIE, session, LOGIN_PATH)


def _cookie_flags(request: web.Request) -> dict[str, Any]:
    return {"httponly": True, "samesite": "Strict", "secure": request.app[ADMIN_SETTINGS].cookie_secure}


def _set_cookie(
    request: web.Request, response: web.StreamResponse, name: str, session: Session, path: str
) -> None:
    settings = request.app[ADMIN_SETTINGS]
    token = request.app[SESSION_KEY].encrypt(json.dumps(dict(session)).encode()).decode()
    response.set_cookie(name, token, path=path, max_age=settings.session_max_age_s, **_cookie_flags(request))


def get_session(request: web.Request) -> Session:
    return request[SESSION]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("X-OpenHIM-ClientID"):
        raise Forbidden("Point-of-service clients may not use the admin interface.")
    session = _load_session(request)
    request[SESSION] = session
    try:
        response = await _authorised(request, session, handler)
    except web.HTTPException as exc:
        _save_session(request, session, exc)
        raise
    _save_session(request, session, response)
    return response


async def _authorised(request: web.Request, session: Session, handler: Handler) -> web.StreamResponse:
    if (request.method, request.path) in PUBLIC or request.path.startswith("/admin/static/"):
        if request.method in UNSAFE and request.path == "/admin/login":
            await _check_csrf(request, session)
        return await handler(request)
    user, sid, since = session.get("user"), session.get("sid"), session.get("since")
    fresh = (
        isinstance(since, (int, float))
        and time.time() - since < request.app[ADMIN_SETTINGS].session_max_age_s
    )
    if not user or not sid or not fresh or not request.app[USERS].session_open(str(user), str(sid)):
        session.invalidate()
        if request.method == "GET" and _wants_html(request):
            if COOKIE not in request.cookies and request.headers.get("Sec-Fetch-Site") == "cross-site":
                return _same_site_again(request)
            raise web.HTTPSeeOther(f"/admin/login?next={request.path_qs}")
        raise Unauthorized("Log in as an HIE admin first.")
    if request.method in UNSAFE:
        await _check_csrf(request, session)
    request[ADMIN_USER] = str(user)
    request[ADMIN_CSRF] = csrf_token(session)
    return await handler(request)


def _same_site_again(request: web.Request) -> web.Response:
    """A link on another site led here, so the browser withheld the SameSite=Strict cookie: load the same
    address again from this page (a same-site navigation, which carries the cookie) rather than showing a
    logged-in admin the login form. Without a session the second load goes to the login form as usual."""
    target = html.escape(request.path_qs)
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" '
        f'content="0;url={target}"><title>Client registry admin</title></head>'
        f'<body><p><a href="{target}">Continue to the client registry admin</a></p></body></html>'
    )
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _check_csrf(request: web.Request, session: Session) -> None:
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    expected = session.get("csrf")
    if not sent or not expected or not hmac.compare_digest(str(sent), str(expected)):
        raise Forbidden("Missing or wrong CSRF token; reload the page and try again.")


async def log_in(request: web.Request, name: str, password: str) -> str:
    """Check the password; on success start a fresh session and return its CSRF token."""
    throttle = request.app[THROTTLE]
    address = client_address(request)  # the TCP peer, unless that is a trusted proxy
    await throttle.check(name, address)
    user = request.app[USERS].verify(name, password)
    if user is None:
        await throttle.failed(name, address)
        raise Unauthorized("Unknown user or wrong password.")
    await throttle.succeeded(name)
    session = get_session(request)
    _end(request, session)  # a login over an open session replaces it
    session.invalidate()
    session.invalid = False
    session["user"] = user.name
    max_age_s = request.app[ADMIN_SETTINGS].session_max_age_s
    session["sid"] = request.app[USERS].start_session(user.name, max_age_s)
    session["since"] = time.time()
    return csrf_token(session)


async def log_out(request: web.Request) -> None:
    session = get_session(request)
    _end(request, session)
    session.invalidate()


def _end(request: web.Request, session: Session) -> None:
    user, sid = session.get("user"), session.get("sid")
    if user and sid:
        request.app[USERS].end_session(str(user), str(sid))


ADMIN_SETTINGS = web.AppKey("admin_settings", AdminSettings)
SESSION_KEY = web.AppKey("admin_session_key", Fernet)  # the settings' key, or the app's own without one
