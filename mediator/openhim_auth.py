"""Authentication of the mediator to the OpenHIM core's API (an API *user*, not a channel client).

``CR_OPENHIM_AUTH``: ``basic`` (cores >= 7.1: ``Authorization: Basic`` on every request) or ``token`` (the
older salted-hash headers ``auth-username``, ``auth-ts``, ``auth-salt``, ``auth-token``). How each is
computed, with the core's sources as evidence: ``docs/internals.md``.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from urllib.parse import quote

import aiohttp

from .instants import instant

SCHEMES = ("basic", "token")


class AuthError(Exception):
    """The core refused our credentials (401/403/404 on the salt look-up); an admin must fix the setting."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the core's answer: 401 (credentials) or 403 (rights), None for the look-up


def basic_header(username: str, password: str) -> dict[str, str]:
    raw = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def password_hash(user_salt: str, password: str) -> str:
    return hashlib.sha512((user_salt + password).encode()).hexdigest()


def token_headers(
    username: str, password: str, user_salt: str, *, now: datetime | None = None
) -> dict[str, str]:
    ts = instant(now, timespec="milliseconds")
    token = hashlib.sha512((password_hash(user_salt, password) + user_salt + ts).encode()).hexdigest()
    return {"auth-username": username, "auth-ts": ts, "auth-salt": user_salt, "auth-token": token}


class CoreAuth:
    """Produces the auth headers for one call; for ``token`` fetches (and caches) the user's salt."""

    def __init__(self, scheme: str, username: str, password: str) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"CR_OPENHIM_AUTH must be one of {', '.join(SCHEMES)}, not {scheme!r}")
        self.scheme = scheme
        self.username = username
        self._password = password
        self._salt: str | None = None

    def forget(self) -> None:
        """Drop the cached salt (after a 401: the user's password may have been changed)."""
        self._salt = None

    async def headers(
        self, session: aiohttp.ClientSession, api_url: str, client_timeout: aiohttp.ClientTimeout
    ) -> dict[str, str]:
        if self.scheme == "basic":
            return basic_header(self.username, self._password)
        if self._salt is None:
            url = f"{api_url}/authenticate/{quote(self.username, safe='')}"
            async with session.get(url, timeout=client_timeout) as resp:
                if resp.status != 200:
                    raise AuthError(f"token salt look-up for the API user answered HTTP {resp.status}")
                body = await resp.json(content_type=None)
            salt = body.get("salt") if isinstance(body, dict) else None
            if not isinstance(salt, str):
                raise AuthError("token salt look-up answered without a salt")
            self._salt = salt
        return token_headers(self.username, self._password, self._salt)
