"""Admin users: a local JSON file of argon2id password hashes (``CR_ADMIN_USERS_FILE``, mode 0600).

Why a file and not HAPI: the users must exist before the registry can be reached by anyone, the CLI that
creates the first admin must work while HAPI is down, and password hashes never belong in the clinical
store that POS systems read through. The file is re-read whenever it changes on disk, so a user removed
or re-passworded by the CLI is refused on that user's next request (sessions re-check the user every time).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12

_hasher = PasswordHasher()
# verify() of an unknown user still costs one hash, so response times do not reveal which names exist
_DUMMY_HASH = _hasher.hash("not-a-user-password-placeholder")


@dataclass(frozen=True)
class AdminUser:
    name: str
    password_hash: str
    created: str


class UserStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, AdminUser] = {}

    def _load(self) -> dict[str, AdminUser]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._users = None, {}
            return self._users
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
            self._users = {
                name: AdminUser(name, u["password_hash"], u.get("created", ""))
                for name, u in data.get("users", {}).items()
            }
            self._stamp = stamp
        return self._users

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
        users = dict(self._load())
        created = users[name].created if name in users else _now()
        users[name] = AdminUser(name, _hasher.hash(password), created)
        self._write(users)
        return users[name]

    def remove(self, name: str) -> bool:
        users = dict(self._load())
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True

    def _write(self, users: dict[str, AdminUser]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "users": {
                u.name: {"password_hash": u.password_hash, "created": u.created} for u in users.values()
            }
        }
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".admin-users-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
