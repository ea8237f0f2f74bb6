"""Curation for HIE admins, mounted at ``/admin``: review queue, decisions, repairs, audit, web page.

Public: :func:`setup` (mounts the sub-application), :class:`AdminSettings`, :class:`UserStore`.
Modules: ``users`` (argon2 password file), ``auth`` (session cookie, CSRF, per-request checks),
``curation`` (decisions as single HAPI transactions with AuditEvents), ``queries`` (read side),
``requests`` (what handlers read from a request), ``api`` (JSON), ``pages`` (server-rendered HTML),
``jobs`` (background bulk loads and re-matches), ``job_handlers`` (their API and page),
``__main__`` (``python -m mediator.admin create-user``).
"""

from __future__ import annotations

from aiohttp import web
from cryptography.fernet import Fernet

from ..context import STORE
from ..headers import strict_transport
from ..settings import AdminSettings
from . import api, job_handlers, pages
from .auth import ADMIN_SETTINGS, SESSION_KEY, THROTTLE, USERS, auth_middleware
from .score_index import SCORE_INDEX, ScoreIndex
from .throttle import LoginThrottle, Throttle
from .users import UserStore

ADMIN_APP = web.AppKey("admin_app", web.Application)


def create_admin_app(settings: AdminSettings, throttle: Throttle | None = None) -> web.Application:
    """``throttle``: failed logins counted where all replicas see them (default: in this process). Without a
    session key in ``settings`` the app makes one of its own (sessions end with it; nothing is written)."""
    admin = web.Application()
    admin[ADMIN_SETTINGS] = settings
    admin[SESSION_KEY] = Fernet(settings.secret_key or Fernet.generate_key())
    admin[USERS] = UserStore(settings.users_file)
    admin[THROTTLE] = throttle if throttle is not None else LoginThrottle()
    if settings.cookie_secure:  # served over HTTPS: browsers are told to keep to it
        admin.on_response_prepare.append(strict_transport)
    admin.middlewares.append(pages.error_pages)  # outermost: sees what auth and the handlers raise
    admin.middlewares.append(auth_middleware)
    api.add_routes(admin)
    job_handlers.add_routes(admin)
    pages.add_routes(admin)
    return admin


def setup(app: web.Application, admin_settings: AdminSettings, throttle: Throttle | None = None) -> None:
    """Mount the admin sub-application at ``/admin`` on the mediator's app."""
    admin = create_admin_app(admin_settings, throttle)
    app[ADMIN_APP] = admin
    app[SCORE_INDEX] = ScoreIndex()
    app.add_subapp("/admin", admin)

    async def install_score_index(app: web.Application) -> None:
        store, index = app[STORE], app[SCORE_INDEX]

        def store_changed() -> None:  # what was known of the old store is no longer true
            index.reset()
            index.start(store.hapi)

        store.on_change.append(store_changed)
        index.start(store.hapi)  # in the background: HAPI may still be starting

    async def stop_score_index(app: web.Application) -> None:
        await app[SCORE_INDEX].stop()

    app.on_startup.append(install_score_index)
    app.on_shutdown.append(stop_score_index)  # before the HAPI session closes


__all__ = ["AdminSettings", "UserStore", "create_admin_app", "setup"]
