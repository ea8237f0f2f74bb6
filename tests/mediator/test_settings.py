"""Every start-up setting is in :class:`Settings` (the admin's and the jobs' too): ``Settings.from_env`` reads
them, and an app built from a ``Settings`` reads no environment variable and writes no settings file. The
admin session key file is made by the entry points (``with_secret_key``), not by the app."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet, InvalidToken

from mediator.admin.auth import with_secret_key
from mediator.admin.jobs import JOBS
from mediator.admin.users import UserStore
from mediator.app import create_app
from mediator.context import STORE
from mediator.settings import REPO_ROOT, AdminSettings, Settings
from tests.conftest import app_settings

PASSWORD = "correct horse battery staple"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_from_env_reads_the_admin_and_jobs_settings(tmp_path: Path):
    key = Fernet.generate_key()
    env = {
        "CR_JOBS_DIR": str(tmp_path / "jobs"),
        "CR_ADMIN_USERS_FILE": str(tmp_path / "users.json"),
        "CR_ADMIN_SECRET_KEY": key.decode(),
        "CR_ADMIN_SECRET_FILE": str(tmp_path / "secret.key"),
        "CR_ADMIN_SESSION_HOURS": "0.5",
        "CR_ADMIN_COOKIE_SECURE": "true",
    }
    settings = Settings.from_env(env)
    assert settings.jobs_dir == tmp_path / "jobs"
    assert settings.admin == AdminSettings(
        users_file=tmp_path / "users.json",
        secret_key=key,
        secret_file=tmp_path / "secret.key",
        session_max_age_s=1800,
        cookie_secure=True,
    )
    defaults = Settings.from_env({})
    assert defaults.jobs_dir == REPO_ROOT / "var" / "jobs"
    assert defaults.admin == AdminSettings()  # var/admin-users.json, no key yet: nothing read or written
    assert defaults.admin.secret_key is None
    with pytest.raises(ValueError):
        Settings.from_env({"CR_ADMIN_SECRET_KEY": "not a fernet key"})


def test_the_entry_points_key_is_generated_once_into_its_file(tmp_path: Path):
    settings = Settings.from_env({"CR_ADMIN_SECRET_FILE": str(tmp_path / "var" / "secret.key")})
    assert not (tmp_path / "var").exists()  # reading the environment wrote nothing
    first = with_secret_key(settings)
    path = tmp_path / "var" / "secret.key"
    assert first.admin.secret_key == path.read_bytes().strip()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert with_secret_key(settings).admin.secret_key == first.admin.secret_key  # read again, not replaced
    given = Settings.from_env(
        {"CR_ADMIN_SECRET_KEY": Fernet.generate_key().decode(), "CR_ADMIN_SECRET_FILE": "/x"}
    )
    assert with_secret_key(given) is given  # a key in the environment: no file


async def test_an_app_takes_admin_and_jobs_settings_from_settings_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    env_key = Fernet.generate_key()
    UserStore(tmp_path / "env-users.json").set_password("mallory", PASSWORD)
    monkeypatch.setenv("CR_JOBS_DIR", str(tmp_path / "env-jobs"))
    monkeypatch.setenv("CR_ADMIN_USERS_FILE", str(tmp_path / "env-users.json"))
    monkeypatch.setenv("CR_ADMIN_SECRET_KEY", env_key.decode())
    monkeypatch.setenv("CR_ADMIN_SECRET_FILE", str(tmp_path / "env-secret.key"))
    monkeypatch.setenv("CR_ADMIN_COOKIE_SECURE", "true")
    repo_key = REPO_ROOT / "var" / "admin-secret.key"
    repo_key_before = repo_key.stat().st_mtime_ns if repo_key.exists() else None

    folder = tmp_path / "app"
    settings = app_settings(  # no key: the app makes one of its own
        folder, hapi_base_url=f"http://127.0.0.1:{_closed_port()}/fhir", hapi_connect_timeout_s=1.0
    )
    UserStore(settings.admin.users_file).set_password("alice", PASSWORD)
    async with TestClient(TestServer(create_app(settings))) as client:
        assert client.app[JOBS].dir == settings.jobs_dir and settings.jobs_dir.is_dir()
        refused = await client.post("/admin/api/login", json={"username": "mallory", "password": PASSWORD})
        assert refused.status == 401  # the environment's user file is not read
        resp = await client.post("/admin/api/login", json={"username": "alice", "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        assert "Secure" not in resp.headers["Set-Cookie"]  # the environment's cookie setting is not read
        with pytest.raises(InvalidToken):  # nor its key
            Fernet(env_key).decrypt(resp.cookies["cr_admin"].value)
    assert not (tmp_path / "env-jobs").exists()
    assert not (tmp_path / "env-secret.key").exists() and not settings.admin.secret_file.exists()
    assert (repo_key.stat().st_mtime_ns if repo_key.exists() else None) == repo_key_before


async def test_shared_writes_reach_the_registry_of_every_store(tmp_path: Path):
    """``CR_SHARED_WRITES`` sets how many transactions of single submissions run before others share one;
    it holds for the registry of the store in force and for one made when the store changes."""
    assert Settings.from_env({}).shared_writes == 2
    assert Settings.from_env({"CR_SHARED_WRITES": "0"}).shared_writes == 0
    settings = app_settings(
        tmp_path, hapi_base_url=f"http://127.0.0.1:{_closed_port()}/fhir", hapi_connect_timeout_s=1.0
    )
    for wanted in (0, 5):
        app = create_app(replace(settings, shared_writes=wanted))
        async with TestClient(TestServer(app)):
            store = app[STORE]
            assert store.registry.shared_writes == wanted
            store.use(replace(store.target, base_url=f"http://127.0.0.1:{_closed_port()}/fhir"))
            assert store.registry.shared_writes == wanted
