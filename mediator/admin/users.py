"""Admin users and their open sessions: a local JSON file of argon2id password hashes
(``CR_ADMIN_USERS_FILE``, mode 0600), shared by replicas, changed only under a file lock. Why a file, and
how sessions end on every replica: ``docs/internals.md`` (Admin sessions).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from ..files import write_json
from ..instants import instant

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12
MAX_SESSIONS = 20  # per user; a new login beyond this ends the session that would expire first

_hasher = PasswordHasher()
# verify() of an unknown user still costs one hash, so response times do not reveal which names exist
_DUMMY_HASH = _hasher.hash("not-a-user-password-placeholder")


@dataclass(frozen=True)
class AdminUser:
    name: str
    password_hash: str
    created: str
    # SHA-256 (hex) of each open session's id -> when it expires (seconds since the epoch)
    sessions: Mapping[str, float] = field(default_factory=dict)


def _session_key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class UserStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw: bytes | None = None
        self._users: dict[str, AdminUser] = {}

    def _load(self) -> dict[str, AdminUser]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._raw, self._users = None, {}
            return self._users
        if raw != self._raw:
            data = json.loads(raw.decode("utf-8") or "{}")
            self._users = {
                name: AdminUser(
                    name,
                    u["password_hash"],
                    u.get("created", ""),
                    {k: float(v) for k, v in u.get("sessions", {}).items()},
                )
                for name, u in data.get("users", {}).items()
            }
            self._raw = raw
        return self._users

    @contextmanager
    def _change(self) -> Iterator[dict[str, AdminUser]]:
        """The users as they are on disk, under the file's lock; what the block leaves in it is written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            users = dict(self._load())
            before = dict(users)
            yield users
            if users != before:
                self._write(users)
        finally:
            os.close(fd)  # releases the lock

    def get(self, name: str) -> AdminUser | None:
        return self._load().get(name)

    def names(self) -> list[str]:
        return sorted(self._load())

    def verify(self, name: str, password: str) -> AdminUser | None:
        user = self.get(name)
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user

    def set_password(self, name: str, password: str) -> AdminUser:
        if not USERNAME.match(name):
            raise ValueError("user names are 1-64 characters: letters, digits and . _ @ -")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"passwords need at least {MIN_PASSWORD} characters")
        password_hash = _hasher.hash(password)
        with self._change() as users:
            created = users[name].created if name in users else instant()
            users[name] = AdminUser(name, password_hash, created)  # no sessions: a new password ends them
            return users[name]

    def remove(self, name: str) -> bool:
        with self._change() as users:
            return users.pop(name, None) is not None

    # -- sessions --------------------------------------------------------------------------------------

    def start_session(self, name: str, max_age_s: float) -> str:
        """A new session id for ``name`` (listed until it expires or is ended)."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        with self._change() as users:
            user = users.get(name)
            if user is None:
                raise KeyError(name)
            open_ = {k: exp for k, exp in user.sessions.items() if exp > now}
            open_[_session_key(session_id)] = now + max_age_s
            kept = sorted(open_.items(), key=lambda item: item[1])[-MAX_SESSIONS:]
            users[name] = replace(user, sessions=dict(kept))
        return session_id

    def end_session(self, name: str, session_id: str) -> None:
        key = _session_key(session_id)
        now = time.time()
        with self._change() as users:
            user = users.get(name)
            if user is not None and key in user.sessions:
                left = {k: exp for k, exp in user.sessions.items() if k != key and exp > now}
                users[name] = replace(user, sessions=left)

    def session_open(self, name: str, session_id: str) -> bool:
        """Whether ``name`` exists and this session of theirs has been neither ended nor outlived."""
        user = self.get(name)
        if user is None:
            return False
        expires = user.sessions.get(_session_key(session_id))
        return expires is not None and expires > time.time()

    def _write(self, users: dict[str, AdminUser]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "users": {
                u.name: {"password_hash": u.password_hash, "created": u.created, "sessions": dict(u.sessions)}
                for u in users.values()
            }
        }
        write_json(self.path, doc, mode=0o600, indent=2)
